//! Prints what the text loaders read from real data: `cargo run -p rfa-data --example text_stats --
//! IMDB_DIR ELI5_FILE…`
fn main() {
    let args: Vec<std::path::PathBuf> = std::env::args().skip(1).map(Into::into).collect();
    let imdb = rfa_data::text::load_aclimdb(&args[0], "train").expect("imdb");
    println!(
        "imdb train: {} reviews, {} positive, {} not UTF-8",
        imdb.len(),
        imdb.labels.iter().sum::<usize>(),
        imdb.lossy
    );
    let eli5 =
        rfa_data::text::eli5_experiment_set(&args[1..], &[], 10, 1000, true, 0).expect("eli5");
    let mut counts = vec![0; eli5.class_names.len()];
    eli5.labels.iter().for_each(|&l| counts[l] += 1);
    println!(
        "eli5: {} questions; {:?}",
        eli5.len(),
        eli5.class_names.iter().zip(&counts).collect::<Vec<_>>()
    );
}
