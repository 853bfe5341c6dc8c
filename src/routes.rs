//! The route table: SNI name (and ALPN offer) -> route. Exact names and
//! `*.suffix` wildcards (one or more labels), longest match wins. Routes may
//! share a name when they differ by `alpn`: at each name, a route whose
//! `alpn` meets the hello's offer wins over the one without `alpn`; a name
//! none of whose routes fits the offer is passed over for the next, shorter
//! wildcard. A lookup costs one hash probe per label of the name, whatever
//! the number of routes.

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
    exact: HashMap<String, Group>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Group>,
    /// Index of the `[unknown] action = "forward"` route, stored after the others.
    fallback: Option<usize>,
}

/// The routes of one pattern: those with `alpn` (file order), and the one
/// without (if any).
#[derive(Debug, Default)]
struct Group {
    alpn: Vec<usize>,
    plain: Option<usize>,
}

impl RouteTable {
    /// Builds the table. Config validation already refused a pattern served
    /// twice for the same ALPN id (or twice without `alpn`).
    pub fn new(routes: &[Route], fallback: Option<&Route>) -> RouteTable {
        let mut table = RouteTable::default();
        for (index, route) in routes.iter().enumerate() {
            for pattern in &route.sni {
                let (map, name) = match pattern {
                    HostPattern::Exact(n) => (&mut table.exact, n),
                    HostPattern::Wildcard(n) => (&mut table.wildcard, n),
                };
                let group = map.entry(name.as_str().to_owned()).or_default();
                if route.alpn.is_empty() {
                    group.plain.get_or_insert(index);
                } else {
                    group.alpn.push(index);
                }
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

    /// The route for a name whatever the ALPN (as for a hello offering none).
    pub fn lookup(&self, name: &HostName) -> Option<usize> {
        self.lookup_alpn(name, &[])
    }

    /// The route for a name and an ALPN offer: exact match first, then the
    /// longest wildcard suffix (`*.b.c` beats `*.c` for `a.b.c`); at each,
    /// an `alpn` route meeting the offer, else the route without `alpn`.
    pub fn lookup_alpn(&self, name: &HostName, offer: &[String]) -> Option<usize> {
        let name = name.as_str();
        if let Some(index) = self.exact.get(name).and_then(|g| self.fit(g, offer)) {
            return Some(index);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        // Suffixes after each dot, longest first.
        name.match_indices('.').find_map(|(dot, _)| {
            let group = self.wildcard.get(name.get(dot + 1..)?)?;
            self.fit(group, offer)
        })
    }

    /// The route of `group` for `offer`.
    fn fit(&self, group: &Group, offer: &[String]) -> Option<usize> {
        if !offer.is_empty() {
            let meets = |&&index: &&usize| {
                self.routes
                    .get(index)
                    .is_some_and(|r| r.alpn.iter().any(|id| offer.contains(id)))
            };
            if let Some(&index) = group.alpn.iter().find(meets) {
                return Some(index);
            }
        }
        group.plain
    }

    /// The route for a ClientHello's SNI and ALPN offer, or the fallback
    /// route, or the outcome that rejects it (`unknown_sni` / `no_sni`).
    pub fn pick(&self, sni: Option<&HostName>, alpn: &[String]) -> Result<usize, Outcome> {
        let found = match sni {
            Some(name) => self.lookup_alpn(name, alpn).ok_or(Outcome::UnknownSni),
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

    fn route(names: &[&str]) -> Route {
        let sni = names
            .iter()
            .map(|n| match n.strip_prefix("*.") {
                Some(suffix) => HostPattern::Wildcard(HostName::parse(suffix.as_bytes()).unwrap()),
                None => HostPattern::Exact(HostName::parse(n.as_bytes()).unwrap()),
            })
            .collect();
        Route::new(
            names[0].to_string(),
            sni,
            vec!["127.0.0.1:1".parse().unwrap()],
        )
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
        assert_eq!(t.pick(Some(&name("b.test")), &[]), Err(Outcome::UnknownSni));
        assert_eq!(t.pick(None, &[]), Err(Outcome::NoSni));
        let mut fb = route(&["unknown"]);
        fb.name = "unknown".into();
        let t = RouteTable::new(&[route(&["a.test"])], Some(&fb));
        assert_eq!(t.pick(Some(&name("a.test")), &[]), Ok(0));
        assert_eq!(t.pick(Some(&name("b.test")), &[]), Ok(1));
        assert_eq!(t.pick(None, &[]), Ok(1));
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

    fn alpn_route(names: &[&str], alpn: &[&str]) -> Route {
        let mut r = route(names);
        r.alpn = alpn.iter().map(ToString::to_string).collect();
        r.name = format!("{}[{}]", names[0], alpn[0]);
        r
    }

    fn offer(ids: &[&str]) -> Vec<String> {
        ids.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn alpn_routes_win_for_their_offer_only() {
        let routes = [
            route(&["vault.test", "*.apps.test"]),
            alpn_route(&["vault.test"], &["acme-tls/1"]),
            alpn_route(&["vault.test", "*.apps.test"], &["h3", "spdy/3"]),
            alpn_route(&["acme.test"], &["acme-tls/1"]),
            route(&["*.test"]),
        ];
        let t = RouteTable::new(&routes, None);
        let n = name("vault.test");
        assert_eq!(t.pick(Some(&n), &offer(&["acme-tls/1"])), Ok(1));
        assert_eq!(t.pick(Some(&n), &offer(&["h2", "http/1.1"])), Ok(0));
        assert_eq!(t.pick(Some(&n), &[]), Ok(0));
        assert_eq!(t.pick(Some(&n), &offer(&["h2", "spdy/3"])), Ok(2));
        assert_eq!(t.lookup(&n), Some(0));
        let w = name("x.apps.test");
        assert_eq!(t.pick(Some(&w), &offer(&["h3"])), Ok(2));
        assert_eq!(t.pick(Some(&w), &offer(&["acme-tls/1"])), Ok(0));
        // An exact name whose only route wants another ALPN: the wildcard serves it.
        let a = name("acme.test");
        assert_eq!(t.pick(Some(&a), &offer(&["acme-tls/1"])), Ok(3));
        assert_eq!(t.pick(Some(&a), &offer(&["h2"])), Ok(4));
        assert_eq!(t.pick(Some(&a), &[]), Ok(4));
        let t = RouteTable::new(&routes[..4], None);
        assert_eq!(t.pick(Some(&a), &offer(&["h2"])), Err(Outcome::UnknownSni));
    }
}
