//! The leader's roles, for a follower being seeded: so that the objects' owners and
//! privileges in the schema dump exist there, and an application role that reads or writes on
//! the leader can do the same on the follower (and after a promotion).
//!
//! Every role but PostgreSQL's own (`pg_*`) is created on the follower when it has none of
//! that name, with the leader's attributes except those that would widen what the follower
//! trusts: never `SUPERUSER`, `REPLICATION` or `BYPASSRLS`. Roles the follower already has
//! are left as they are (its superuser, the role walship connects as). Memberships follow.
//! Passwords are not carried (the follower's `pg_hba.conf` decides how roles log in there);
//! role changes after seeding are not replicated (see the README).

use crate::seed::error::pg;
use crate::seed::SeedError;
use crate::sql::{quote_ident, quote_literal};

/// SQL that creates the leader's roles on a follower that lacks them, then their memberships.
pub(super) async fn roles_sql(client: &tokio_postgres::Client) -> Result<String, SeedError> {
    let roles = client
        .query(
            "SELECT rolname, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolconnlimit,
                    to_char(rolvaliduntil AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS+00')
               FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY rolname",
            &[],
        )
        .await
        .map_err(pg("read the roles"))?;
    let mut sql = String::from("-- the leader's roles (walship seeding)\n");
    for row in &roles {
        let name: String = row.get(0);
        let flag = |i: usize, yes: &str, no: &str| if row.get::<_, bool>(i) { yes.to_owned() } else { no.to_owned() };
        let mut create = format!(
            "CREATE ROLE {} WITH NOSUPERUSER NOREPLICATION NOBYPASSRLS {} {} {} {} CONNECTION LIMIT {}",
            quote_ident(&name),
            flag(1, "INHERIT", "NOINHERIT"),
            flag(2, "CREATEROLE", "NOCREATEROLE"),
            flag(3, "CREATEDB", "NOCREATEDB"),
            flag(4, "LOGIN", "NOLOGIN"),
            row.get::<_, i32>(5),
        );
        if let Some(until) = row.get::<_, Option<String>>(6) {
            create.push_str(&format!(" VALID UNTIL {}", quote_literal(&until)));
        }
        sql.push_str(&format!(
            "DO $walship$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {}) THEN {create}; END IF; END $walship$;\n",
            quote_literal(&name)
        ));
    }
    let memberships = client
        .query(
            "SELECT r.rolname, m.rolname, a.admin_option
               FROM pg_auth_members a
               JOIN pg_roles r ON r.oid = a.roleid
               JOIN pg_roles m ON m.oid = a.member
              WHERE r.rolname !~ '^pg_' AND m.rolname !~ '^pg_'
              ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(pg("read the role memberships"))?;
    for row in &memberships {
        let (role, member): (String, String) = (row.get(0), row.get(1));
        let admin = if row.get::<_, bool>(2) { " WITH ADMIN OPTION" } else { "" };
        sql.push_str(&format!("GRANT {} TO {}{admin};\n", quote_ident(&role), quote_ident(&member)));
    }
    Ok(sql)
}
