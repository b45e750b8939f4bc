//! Stage 4, authorize: what this terminal and this person may call.
//!
//! Today every admitted terminal with a signed-in person may call everything: this stage is the
//! place where scopes (`client`, `reference`, `write`, the intersection of the terminal's and the
//! person's) will refuse a call, with the engine API rules' classification of the call as input.
//! It has its own type and place in the list of stages so that adding the rule changes nothing
//! around it.

use hyper::Request;

use crate::auth::Person;
use crate::doors::identity::Terminal;
use crate::http1;
use crate::pipeline::reply::Refused;

/// The stage; it holds no settings yet.
pub struct Authorize;

impl Authorize {
    /// Whether `person` at `terminal` may make this call.
    pub fn check(
        &self,
        _req: &Request<http1::Body>,
        _terminal: &Terminal,
        _person: &Person,
    ) -> Result<(), Refused> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Clinic, request};

    #[test]
    fn until_scopes_exist_every_call_of_an_authenticated_person_is_allowed() {
        let c = Clinic::new(&[("reception-1", true)], &[]);
        let terminal = c.admitted("reception-1").terminal;
        let person = c.people.anonymous();
        for (method, path) in [
            ("POST", "/api01rv2/patientlst2v2"),
            ("POST", "/orca11/acceptmodv2"),
            ("POST", "/rpc/"),
        ] {
            assert!(
                Authorize
                    .check(&request(method, path, &[], ""), &terminal, &person)
                    .is_ok()
            );
        }
    }
}
