//! An admitted connection's traffic, stage by stage: the same for every door.
//!
//! A listener serves one [`Route`]: the engine API over HTTP/1.1 (`api`) or raw TCP (`tcp`). An
//! api request passes these stages, each a type in its own file with one job and only the inputs
//! it needs, so each can be tested without a socket:
//!
//! 1. [`admit`]: is the terminal still admitted (after a reload), and can access be recorded?
//! 2. [`pages`]: the gateway's own pages under `/kakehashi/` (the login page);
//! 3. [`authenticate`]: the person, by session cookie or HTTP Basic;
//! 4. [`authorize`]: what this terminal and person may call (the place for scopes);
//! 5. [`limit`]: the body's size;
//! 6. [`forward`]: the cloud engine, or the local engine in its place;
//! 7. [`respond`]: the answer with its hybrid state, and the audit entry.
//!
//! [`connection`] strings them together for one HTTP/1.1 connection (`crate::http1`); [`stream`]
//! is the raw TCP route, with the stages a stream has. [`reply`] makes the gateway's own
//! answers, [`counted`] counts bodies, [`relay`] copies upgraded and raw streams.

pub mod admit;
pub mod authenticate;
pub mod authorize;
pub mod connection;
pub mod counted;
pub mod forward;
pub mod limit;
pub mod pages;
pub mod relay;
pub mod reply;
pub mod respond;
pub mod stream;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use engine_proxy::boxed::boxed;

use crate::doors::Admitted;
use crate::http1;
use crate::io::Io;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// The stages, as one worker runs them (each worker has its own engine clients in `forward`).
pub struct Pipeline {
    pub admit: admit::Admit,
    pub pages: pages::Pages,
    pub authenticate: authenticate::Authenticate,
    pub authorize: authorize::Authorize,
    pub limit: limit::Limit,
    pub forward: forward::Forward,
    pub respond: respond::Respond,
    /// The raw TCP route's stages.
    pub streams: stream::Streams,
    /// What every request's head is held to (`limits.header_timeout_secs`, `max_header_bytes`).
    pub http: http1::Limits,
    pub metrics: Arc<Metrics>,
}

/// What a listener serves.
pub enum Route {
    /// The engine API; the route's name in the audit log.
    Api(Arc<str>),
    Stream(Arc<stream::StreamRoute>),
}

impl Route {
    pub fn name(&self) -> &Arc<str> {
        match self {
            Route::Api(name) => name,
            Route::Stream(route) => &route.name,
        }
    }
}

/// A connection's future for its whole life.
pub type Serving = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Pipeline {
    /// Serves an admitted connection on `route` until it ends, boxed at its route's own size (an
    /// api connection's future is not sized for the raw route's, or the other way round), since
    /// it is most of what an idle terminal costs.
    pub fn serve<S: Io>(
        self: &Arc<Self>,
        admitted: Admitted<S>,
        route: &Route,
        shutdown: Shutdown,
    ) -> Serving {
        match route {
            Route::Api(name) => boxed(|| self.serve_api(admitted, name.clone(), shutdown)),
            Route::Stream(route) => {
                let (pipeline, route) = (self.clone(), route.clone());
                boxed(|| async move { pipeline.streams.serve(&route, admitted, shutdown).await })
            }
        }
    }

    /// HTTP/1.1 on the admitted stream until either side closes or shutdown. (A plain function
    /// returning the server's future, not an `async fn` around it: that would keep a second copy
    /// of the stream in its own state.)
    fn serve_api<S: Io>(
        self: &Arc<Self>,
        admitted: Admitted<S>,
        route: Arc<str>,
        shutdown: Shutdown,
    ) -> impl Future<Output = ()> + Send + 'static {
        let Admitted {
            stream,
            who,
            source,
            slot,
        } = admitted;
        let conn = Arc::new(connection::Connection {
            pipeline: self.clone(),
            standing: admit::Standing::new(&who),
            terminal: who.terminal.name.as_str().into(),
            who,
            source: source.to_string().into(),
            route,
            memo: Default::default(),
            stopping: shutdown.clone(),
            _slot: slot,
        });
        http1::serve(stream, conn, self.http, shutdown)
    }
}
