//! Stage 4, authorize: what this terminal and this person may call.
//!
//! Today every admitted terminal with a signed-in person may call everything: this stage is the
//! place where scopes (`client`, `reference`, `write`, the intersection of the terminal's and the
//! person's) will refuse a call, with the engine API rules' classification of the call as input.
//! It has its own type and place in the list of stages so that adding the rule changes nothing
//! around it.

use hyper::Request;

use crate::doors::identity::Terminal;
use crate::h1;
use crate::person::Person;
use crate::pipeline::reply::Refused;

/// The stage; it holds no settings yet.
pub struct Authorize;

impl Authorize {
    /// Whether `person` at `terminal` may make this call.
    pub fn check(&self, _req: &Request<h1::Body>, _terminal: &Terminal, _person: &Person) -> Result<(), Refused> {
        Ok(())
    }
}
