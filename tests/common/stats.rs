//! The sampler's statistics: how far an estimate may fairly be from the truth.

/// The standard deviation, in bytes, of the estimated bytes of `count` allocations of `size` bytes each at
/// sample rate `rate`: `sqrt(count · size² · (1 − p) / p)`, p = 1 − e^(−size/rate) (see src/sampler.rs).
pub fn sigma_bytes(size: usize, count: usize, rate: usize) -> f64 {
    let p = -(-(size as f64) / rate as f64).exp_m1();
    (count as f64 * (size as f64).powi(2) * (1.0 - p) / p).sqrt()
}
