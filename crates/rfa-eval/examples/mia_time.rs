//! Times SalUn's membership attack (`mia_efficacy`) at a data-set size: N retain and N test
//! confidences (synthetic, seeded), 5,000 forget confidences. The SVC fit dominates evaluation
//! time at CIFAR-10 size: `cargo run --release -p rfa-eval --example mia_time 10000` took 96 s on
//! one of this workplace's cores (linfa-svm builds the dense 20,000² kernel matrix), which is why
//! `rfa eval` fits the models' attacks side by side.

fn main() {
    let n: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(10000);
    let mut s = 1u64;
    let mut r = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    let retain: Vec<f64> = (0..n).map(|_| 0.5 + 0.5 * r()).collect();
    let test: Vec<f64> = (0..n).map(|_| r()).collect();
    let forget: Vec<f64> = (0..5000).map(|_| r()).collect();
    let t = std::time::Instant::now();
    let m = rfa_eval::mia_efficacy(&retain, &test, &forget).unwrap();
    println!("n {n} mia {m:.2} in {:.1}s", t.elapsed().as_secs_f64());
}
