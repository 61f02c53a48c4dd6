//! How a window's subject prints, in output ids, records and store keys.
//! A subject joins two names (component and endpoint, project and
//! component) with a separator; a name that holds the separator would make
//! two subjects print alike ("adv x" + "y z" and "adv x y" + "z"), so every
//! part but the last escapes it, percent-style, with `%` itself. Names
//! without these characters print as they always did, so their ids stay.

use std::borrow::Cow;

/// `s` with `%` and each of `special` written as `%XX`.
pub fn escape<'a>(s: &'a str, special: &[char]) -> Cow<'a, str> {
    if !s.chars().any(|c| c == '%' || special.contains(&c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '%' || special.contains(&c) {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A latency subject: the component, or `component endpoint`.
pub fn latency(component: &str, endpoint: Option<&str>) -> String {
    let c = escape(component, &[' ']);
    match endpoint {
        Some(e) => format!("{c} {e}"),
        None => c.into_owned(),
    }
}

/// An uncertainty subject: `project|component`.
pub fn uncertainty(project_id: &str, component: &str) -> String {
    format!("{}|{component}", escape(project_id, &['|']))
}

/// One part of a `:`-separated store key (Redis).
pub fn key_part(s: &str) -> Cow<'_, str> {
    escape(s, &[':'])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_names_print_as_they_always_did() {
        assert_eq!(latency("checkout", Some("POST /pay")), "checkout POST /pay");
        assert_eq!(latency("checkout", None), "checkout");
        assert_eq!(uncertainty("atlas", "search"), "atlas|search");
        assert_eq!(key_part("checkout"), "checkout");
    }

    #[test]
    fn the_reported_collisions_are_gone() {
        assert_ne!(latency("adv x", Some("y z")), latency("adv x y", Some("z")));
        assert_ne!(latency("adv x", None), latency("adv", Some("x")));
        assert_ne!(uncertainty("p|q", "r"), uncertainty("p", "q|r"));
        let key = |c: &str, e: &str| format!("{}:{e}", key_part(c));
        assert_ne!(key("adv:a", "b"), key("adv", "a:b"));
        assert_eq!(latency("50% a", None), "50%25%20a");
    }

    fn name() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a% :|b]{1,5}").unwrap()
    }

    proptest! {
        #[test]
        fn distinct_subjects_print_distinctly(a in name(), b in proptest::option::of(name()), c in name(), d in proptest::option::of(name())) {
            if (a.as_str(), b.as_deref()) != (c.as_str(), d.as_deref()) {
                prop_assert_ne!(latency(&a, b.as_deref()), latency(&c, d.as_deref()));
            }
            if let (Some(b), Some(d)) = (&b, &d) {
                if (&a, b) != (&c, d) {
                    prop_assert_ne!(uncertainty(&a, b), uncertainty(&c, d));
                    prop_assert_ne!(format!("{}:{b}", key_part(&a)), format!("{}:{d}", key_part(&c)));
                }
            }
        }
    }
}
