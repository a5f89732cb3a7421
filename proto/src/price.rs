//! Fixed-point prices: an integer count of `10^-precision` units. Written with exactly the
//! symbol's precision (`187.25`, `0.0050`), so a price never shows float noise.

/// Most decimals a price may carry; `10^18` still fits an `i64`.
pub const MAX_PRECISION: u8 = 18;

/// A price as an integer number of `10^-precision` units; the precision lives with the symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Price(pub i64);

const POW10: [u64; 19] = {
    let mut p = [1u64; 19];
    let mut i = 1;
    while i < 19 {
        p[i] = p[i - 1] * 10;
        i += 1;
    }
    p
};

impl Price {
    /// Appends the price as a JSON number with exactly `precision` decimals.
    pub fn write(self, precision: u8, out: &mut Vec<u8>) {
        let precision = precision.min(MAX_PRECISION) as usize;
        if self.0 < 0 {
            out.push(b'-');
        }
        let units = self.0.unsigned_abs();
        let scale = POW10[precision];
        let mut buf = itoa::Buffer::new();
        out.extend_from_slice(buf.format(units / scale).as_bytes());
        if precision > 0 {
            out.push(b'.');
            let frac = buf.format(units % scale).as_bytes();
            out.extend(std::iter::repeat_n(b'0', precision - frac.len()));
            out.extend_from_slice(frac);
        }
    }

    /// The price as a float, for display and tests only: the wire never goes through `f64`.
    pub fn to_f64(self, precision: u8) -> f64 {
        self.0 as f64 / POW10[precision.min(MAX_PRECISION) as usize] as f64
    }

    /// Number of units in one whole currency unit at `precision`.
    pub fn scale(precision: u8) -> i64 {
        POW10[precision.min(MAX_PRECISION) as usize] as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(units: i64, precision: u8) -> String {
        let mut out = Vec::new();
        Price(units).write(precision, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_exactly_the_precision() {
        assert_eq!(text(18725, 2), "187.25");
        assert_eq!(text(18720, 2), "187.20");
        assert_eq!(text(5, 4), "0.0005");
        assert_eq!(text(42, 0), "42");
        assert_eq!(text(-1501, 2), "-15.01");
        assert_eq!(text(0, 3), "0.000");
        assert_eq!(text(i64::MIN, 2), "-92233720368547758.08");
    }
}
