//! What to do about an error: every module's errors map into one of these classes.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient (a peer restarting, a network cut): retry with backoff.
    Retry,
    /// Will not heal by itself (bad credentials, a missing slot): say so loudly, retry slowly
    /// so the node recovers once an operator fixed it.
    Operator,
    /// Continuing could lose or corrupt data: stop.
    Fatal,
}

impl ErrorClass {
    /// Classifies a PostgreSQL error by its SQLSTATE.
    pub fn of_sqlstate(code: &str) -> ErrorClass {
        match code.get(..2).unwrap_or("") {
            // connection exceptions, operator intervention (shutdown, crash recovery),
            // insufficient resources, object in use (a slot still held by a dying walsender)
            "08" | "57" | "53" | "55" => ErrorClass::Retry,
            // "40": serialization failure or deadlock
            "40" => ErrorClass::Retry,
            // invalid authorization, invalid catalog name, undefined objects, privileges...
            _ => ErrorClass::Operator,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_classify() {
        assert_eq!(ErrorClass::of_sqlstate("57P01"), ErrorClass::Retry); // admin_shutdown
        assert_eq!(ErrorClass::of_sqlstate("55006"), ErrorClass::Retry); // object_in_use
        assert_eq!(ErrorClass::of_sqlstate("28P01"), ErrorClass::Operator); // invalid_password
        assert_eq!(ErrorClass::of_sqlstate("42704"), ErrorClass::Operator); // undefined_object
        assert_eq!(ErrorClass::of_sqlstate(""), ErrorClass::Operator);
    }
}
