//! The daemon's own `pow`, so that it loads no libm.so.
//!
//! tokio's multi-thread scheduler calls `f64::powf` after each batch of
//! task polls (its moving average of poll times), and that is the only C
//! math function in the daemon. glibc's libm.so mapped for that one call
//! was 0.5 MiB of the daemon's RSS: the kernel maps the pages around each
//! fault, of its code and its tables. An executable's own definition
//! resolves the call at link time, and with `--as-needed` (rustc's default)
//! the daemon no longer names libm.so. The body is musl's `pow`, from the
//! `libm` crate (rust-lang/compiler-builtins, the same code Rust's own
//! `core` math uses where there is no C library).

/// `pow(3)`: `x` raised to the power `y`.
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

#[cfg(test)]
mod tests {
    #[test]
    fn pow_is_the_c_library_pow() {
        // tokio's use: the weight of n polls in its moving average.
        assert!((super::pow(0.9, 2.0) - 0.81).abs() < 1e-15);
        assert_eq!(super::pow(2.0, 10.0), 1024.0);
        assert_eq!(super::pow(4.0, 0.5), 2.0);
        assert!(super::pow(-1.0, 0.5).is_nan());
        assert_eq!(super::pow(0.0, -1.0), f64::INFINITY);
    }
}
