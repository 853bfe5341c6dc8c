//! The route table: SNI name -> route. Exact names and `*.suffix` wildcards
//! (one or more labels), longest match wins. A lookup costs one hash probe per
//! label of the name, whatever the number of routes.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{HostPattern, Route};
use crate::hostname::HostName;
use crate::outcome::Outcome;

/// Routes by index into [`RouteTable::routes`], so per-route state (metric
/// handles) can sit in parallel arrays.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    exact: HashMap<String, usize>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, usize>,
    /// Index of the `[unknown] action = "forward"` route, stored after the others.
    fallback: Option<usize>,
}

impl RouteTable {
    /// Builds the table. Config validation already refused duplicate patterns.
    pub fn new(routes: &[Route], fallback: Option<&Route>) -> RouteTable {
        let mut table = RouteTable::default();
        for (index, route) in routes.iter().enumerate() {
            for pattern in &route.sni {
                let (map, name) = match pattern {
                    HostPattern::Exact(n) => (&mut table.exact, n),
                    HostPattern::Wildcard(n) => (&mut table.wildcard, n),
                };
                map.entry(name.as_str().to_owned()).or_insert(index);
            }
            table.routes.push(Arc::new(route.clone()));
        }
        if let Some(route) = fallback {
            table.fallback = Some(table.routes.len());
            table.routes.push(Arc::new(route.clone()));
        }
        table
    }

    /// Every route, the fallback (if any) last.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The route for a name: exact match first, then the longest wildcard
    /// suffix (`*.b.c` beats `*.c` for `a.b.c`).
    pub fn lookup(&self, name: &HostName) -> Option<usize> {
        let name = name.as_str();
        if let Some(&index) = self.exact.get(name) {
            return Some(index);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        // Suffixes after each dot, longest first.
        name.match_indices('.')
            .find_map(|(dot, _)| self.wildcard.get(name.get(dot + 1..)?).copied())
    }

    /// The route for a ClientHello's SNI, or the fallback route, or the
    /// outcome that rejects it (`unknown_sni` / `no_sni`).
    pub fn pick(&self, sni: Option<&HostName>) -> Result<usize, Outcome> {
        let found = match sni {
            Some(name) => self.lookup(name).ok_or(Outcome::UnknownSni),
            None => Err(Outcome::NoSni),
        };
        found.or_else(|outcome| self.fallback.ok_or(outcome))
    }

    /// The route at `index` (as returned by `lookup`/`pick`).
    pub fn get(&self, index: usize) -> Option<&Arc<Route>> {
        self.routes.get(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyProtocol;

    fn route(names: &[&str]) -> Route {
        let sni = names
            .iter()
            .map(|n| match n.strip_prefix("*.") {
                Some(suffix) => HostPattern::Wildcard(HostName::parse(suffix.as_bytes()).unwrap()),
                None => HostPattern::Exact(HostName::parse(n.as_bytes()).unwrap()),
            })
            .collect();
        Route {
            name: names[0].to_string(),
            sni,
            backends: vec!["127.0.0.1:1".parse().unwrap()],
            proxy_protocol: ProxyProtocol::None,
            http_backends: Vec::new(),
        }
    }

    fn name(s: &str) -> HostName {
        HostName::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn exact_then_longest_wildcard() {
        let routes = [
            route(&["app.example.org"]),
            route(&["*.example.org"]),
            route(&["*.apps.example.org", "other.test"]),
        ];
        let t = RouteTable::new(&routes, None);
        assert_eq!(t.lookup(&name("app.example.org")), Some(0));
        assert_eq!(t.lookup(&name("APP.example.org.")), Some(0));
        assert_eq!(t.lookup(&name("x.example.org")), Some(1));
        assert_eq!(t.lookup(&name("a.b.c.example.org")), Some(1));
        assert_eq!(t.lookup(&name("x.apps.example.org")), Some(2));
        assert_eq!(t.lookup(&name("y.x.apps.example.org")), Some(2));
        assert_eq!(t.lookup(&name("apps.example.org")), Some(1));
        assert_eq!(t.lookup(&name("other.test")), Some(2));
        assert_eq!(t.lookup(&name("example.org")), None);
        assert_eq!(t.lookup(&name("org")), None);
        assert_eq!(t.lookup(&name("example.org.evil")), None);
    }

    #[test]
    fn pick_uses_fallback_only_for_valid_hellos_without_a_route() {
        let t = RouteTable::new(&[route(&["a.test"])], None);
        assert_eq!(t.pick(Some(&name("b.test"))), Err(Outcome::UnknownSni));
        assert_eq!(t.pick(None), Err(Outcome::NoSni));
        let mut fb = route(&["unknown"]);
        fb.name = "unknown".into();
        let t = RouteTable::new(&[route(&["a.test"])], Some(&fb));
        assert_eq!(t.pick(Some(&name("a.test"))), Ok(0));
        assert_eq!(t.pick(Some(&name("b.test"))), Ok(1));
        assert_eq!(t.pick(None), Ok(1));
        assert_eq!(t.get(1).unwrap().name, "unknown");
    }

    #[test]
    fn ten_thousand_routes() {
        let routes: Vec<Route> = (0..10_000)
            .map(|i| {
                route(&[
                    &format!("host{i}.example.org"),
                    &format!("*.w{i}.example.net"),
                ])
            })
            .collect();
        let t = RouteTable::new(&routes, None);
        assert_eq!(t.lookup(&name("host9999.example.org")), Some(9999));
        assert_eq!(t.lookup(&name("a.b.w1234.example.net")), Some(1234));
        assert_eq!(t.lookup(&name("nope.example.org")), None);
    }
}
