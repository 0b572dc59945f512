//! The table of every route the server serves: the one place a request's path becomes a
//! [`Route`].
//!
//! Each route is one entry of the table at the top of this file: its variant, its path pattern
//! (matchit syntax, `{name}` for a parameter), the methods it answers, whether it is a WebSocket
//! upgrade and whether the gate's token check runs on it. [`Routes::new`] builds the table once
//! into a [`matchit::Router`]; the gate's first layer ([`crate::gate::route`]) looks every
//! request up there once and leaves the [`RouteMatch`] (route and path parameters) in the
//! request's extensions, where the other layers and the server's dispatch read it. Nothing else
//! looks at paths.
//!
//! A new route is one entry here, e.g.
//! `WsInstance = "/ws/{instance}" { methods: [GET], upgrade: true, token: false },`, plus its arm
//! in the server's dispatch, which the compiler asks for (the dispatch matches every variant).
//! Static segments take priority over parameters, so `/ws/rpc` and `/ws/{instance}` can both be
//! in the table (the tests check that `/ws/rpc` wins).

use hyper::Method;
use hyper::http::Extensions;

/// Declares [`Route`] and its properties from one table, so the variants, the router and the
/// properties cannot drift apart.
macro_rules! routes {
    ($(
        $(#[doc = $doc:literal])*
        $route:ident = $pattern:literal {
            methods: [$($method:ident),+], upgrade: $upgrade:literal, token: $token:literal $(,)?
        },
    )+) => {
        /// A route the server serves (see the module doc for the table).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Route {
            $($(#[doc = $doc])* $route,)+
        }

        impl Route {
            /// Every route, in the table's order.
            pub const ALL: &[Route] = &[$(Route::$route),+];

            /// The path pattern, in matchit syntax (`{name}` for a parameter).
            pub const fn pattern(self) -> &'static str {
                match self {
                    $(Route::$route => $pattern,)+
                }
            }

            /// The methods the route answers; any other is 405.
            pub fn methods(self) -> &'static [Method] {
                match self {
                    $(Route::$route => {
                        const METHODS: &[Method] = &[$(Method::$method),+];
                        METHODS
                    })+
                }
            }

            /// True for a WebSocket route: it takes an RFC 6455 upgrade and nothing else, and
            /// only upgrades go through the origin, rate and capacity checks.
            pub const fn is_upgrade(self) -> bool {
                match self {
                    $(Route::$route => $upgrade,)+
                }
            }

            /// True when the gate's token check runs on the route (a valid token becomes the
            /// request's principal; an invalid one is 401).
            pub const fn takes_token(self) -> bool {
                match self {
                    $(Route::$route => $token,)+
                }
            }
        }
    };
}

routes! {
    /// `GET /ws/rpc` with an upgrade: JSON-RPC 2.0 over WebSocket.
    WsRpc = "/ws/rpc" { methods: [GET], upgrade: true, token: true },
    /// `GET /ws`: the dialects of clients written for other servers.
    WsCompat = "/ws" { methods: [GET], upgrade: true, token: true },
    /// `POST /rpc`: the same JSON-RPC methods over HTTP, without subscriptions.
    HttpRpc = "/rpc" { methods: [POST, OPTIONS], upgrade: false, token: true },
    /// `GET /health`: liveness, `{"status":"ok"}`.
    Health = "/health" { methods: [GET], upgrade: false, token: false },
    /// `GET /metrics`: the Prometheus text exposition.
    Metrics = "/metrics" { methods: [GET], upgrade: false, token: false },
    /// `GET /openrpc.json`: the OpenRPC document of the JSON-RPC methods.
    OpenRpc = "/openrpc.json" { methods: [GET], upgrade: false, token: false },
    /// `GET /openapi.json`: the OpenAPI document of the HTTP routes.
    OpenApi = "/openapi.json" { methods: [GET], upgrade: false, token: false },
    /// `GET /ws/rpc/test`: the browser console.
    Console = "/ws/rpc/test" { methods: [GET], upgrade: false, token: false },
    /// `POST /api/publish`: the server API for backends, one publication or a batch.
    ApiPublish = "/api/publish" { methods: [POST], upgrade: false, token: true },
    /// `GET /ws/{instance}` with an upgrade: an instance's event stream. Its token is the
    /// instance's own (or the admin token), checked by the route's handler, not the gate.
    WsInstance = "/ws/{instance}" { methods: [GET], upgrade: true, token: false },
    /// `POST /api/events/websocket/{instance}`: creates or changes an instance (admin token).
    ApiInstance = "/api/events/websocket/{instance}" { methods: [POST], upgrade: false, token: true },
}

impl Route {
    /// True if the route answers `method`.
    pub fn allows(self, method: &Method) -> bool {
        self.methods().contains(method)
    }
}

/// A request's route and its path parameters, put into the request's extensions by the gate's
/// route layer when the path is in the table (whatever the method).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteMatch {
    /// The route.
    pub route: Route,
    /// The path parameters by name, as they appear in the path (not percent-decoded).
    params: Vec<(String, String)>,
}

impl RouteMatch {
    /// The match the route layer left in `extensions`, if the path is in the table.
    pub fn of(extensions: &Extensions) -> Option<&RouteMatch> {
        extensions.get::<RouteMatch>()
    }

    /// The path parameter `name` (`instance` of `/ws/{instance}`).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// The route table, built once at start.
#[derive(Clone, Debug)]
pub struct Routes {
    router: matchit::Router<Route>,
}

impl Routes {
    /// Every [`Route`] of the table.
    pub fn new() -> Routes {
        let mut router = matchit::Router::new();
        for &route in Route::ALL {
            router
                .insert(route.pattern(), route)
                .expect("the table's patterns are valid and distinct (tested); qed");
        }
        Routes { router }
    }

    /// The route of `path`, with its parameters; `None` if no route has that path.
    pub fn find(&self, path: &str) -> Option<RouteMatch> {
        let m = self.router.at(path).ok()?;
        let params = m.params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Some(RouteMatch { route: *m.value, params })
    }
}

impl Default for Routes {
    fn default() -> Self {
        Routes::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path that `pattern` matches: each `{name}` replaced by a sample value.
    fn sample_path(pattern: &str) -> (String, Vec<(String, String)>) {
        let (mut path, mut params, mut rest) = (String::new(), Vec::new(), pattern);
        while let Some((before, after)) = rest.split_once('{') {
            let (name, tail) = after.split_once('}').expect("a parameter closes");
            let value = format!("sample-{name}");
            path.push_str(before);
            path.push_str(&value);
            params.push((name.trim_start_matches('*').to_string(), value));
            rest = tail;
        }
        path.push_str(rest);
        (path, params)
    }

    /// Every route is reachable through the router, as itself: a route added to the enum (and
    /// so to the dispatch, which matches every variant) but shadowed, or missing from the
    /// router, fails here.
    #[test]
    fn every_route_is_reachable_through_the_router() {
        let routes = Routes::new();
        assert!(!Route::ALL.is_empty());
        for &route in Route::ALL {
            let (path, params) = sample_path(route.pattern());
            let m = routes.find(&path).unwrap_or_else(|| panic!("{route:?} ({path}) is not in the router"));
            assert_eq!(m.route, route, "{path} reaches another route");
            for (name, value) in params {
                assert_eq!(m.param(&name), Some(value.as_str()), "{route:?}: parameter {name}");
            }
            assert!(!route.methods().is_empty(), "{route:?} answers no method");
            if route.is_upgrade() {
                assert_eq!(route.methods(), [Method::GET], "{route:?}: an upgrade is a GET");
            }
        }
    }

    #[test]
    fn todays_routes_and_their_properties() {
        let routes = Routes::new();
        let found = |p: &str| routes.find(p).map(|m| m.route);
        assert_eq!(found("/ws/rpc"), Some(Route::WsRpc));
        assert_eq!(found("/ws/rpc/test"), Some(Route::Console));
        assert_eq!(found("/rpc"), Some(Route::HttpRpc));
        assert_eq!(found("/health"), Some(Route::Health));
        assert_eq!(found("/metrics"), Some(Route::Metrics));
        assert_eq!(found("/openrpc.json"), Some(Route::OpenRpc));
        assert_eq!(found("/ws"), Some(Route::WsCompat));
        assert_eq!(found("/openapi.json"), Some(Route::OpenApi));
        assert_eq!(found("/api/publish"), Some(Route::ApiPublish));
        assert_eq!(found("/ws/other"), Some(Route::WsInstance));
        assert_eq!(found("/api/events/websocket/shop"), Some(Route::ApiInstance));
        for p in ["/", "/ws/", "/ws/rpc/", "/ws/a/b", "/WS/RPC", "/api/publish/", "/api", "/health/x", "*"] {
            assert_eq!(found(p), None, "{p}");
        }
        let upgrades: Vec<Route> = Route::ALL.iter().copied().filter(|r| r.is_upgrade()).collect();
        assert_eq!(upgrades, [Route::WsRpc, Route::WsCompat, Route::WsInstance]);
        let tokens: Vec<Route> = Route::ALL.iter().copied().filter(|r| r.takes_token()).collect();
        assert_eq!(
            tokens,
            [Route::WsRpc, Route::WsCompat, Route::HttpRpc, Route::ApiPublish, Route::ApiInstance]
        );
        assert!(Route::HttpRpc.allows(&Method::POST) && !Route::HttpRpc.allows(&Method::GET));
    }

    /// `/ws/rpc` keeps priority over `/ws/{instance}`, whose parameter is the instance.
    #[test]
    fn static_routes_win_over_instances() {
        let routes = Routes::new();
        assert_eq!(routes.find("/ws/rpc").map(|m| m.route), Some(Route::WsRpc));
        let m = routes.find("/ws/abc").unwrap();
        assert_eq!((m.route, m.param("instance")), (Route::WsInstance, Some("abc")));
    }
}
