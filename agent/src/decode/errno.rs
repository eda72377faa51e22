//! errno values as their names.

/// `ECONNREFUSED` for 111; `errno 4242` for what has no name; `unknown` for
/// 0 (a failure whose errno the kernel keeps nowhere).
pub fn errno_name(errno: i32) -> String {
    if errno == 0 {
        return "unknown".into();
    }
    let e = nix::errno::Errno::from_raw(errno);
    if e == nix::errno::Errno::UnknownErrno {
        format!("errno {errno}")
    } else {
        format!("{e:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(111), "ECONNREFUSED");
        assert_eq!(errno_name(110), "ETIMEDOUT");
        assert_eq!(errno_name(113), "EHOSTUNREACH");
        assert_eq!(errno_name(99), "EADDRNOTAVAIL");
        assert_eq!(errno_name(0), "unknown");
        assert_eq!(errno_name(4242), "errno 4242");
    }
}
