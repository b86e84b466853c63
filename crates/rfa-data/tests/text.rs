//! IMDB (aclImdb layout) and ELI5-Category (JSON / JSONL, gzipped or not) on small files made
//! here in the real formats.

use std::io::Write;
use std::path::{Path, PathBuf};

use rfa_data::text::{eli5_experiment_set, load_aclimdb, read_eli5};

fn write(p: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

fn imdb(dir: &Path) {
    write(&dir.join("train/neg/10_2.txt"), b"Dreadful. <br /><br />Two hours lost.");
    write(&dir.join("train/neg/3_1.txt"), b"Worst film of the year.");
    write(&dir.join("train/pos/7_9.txt"), "A delight — superb cast.".as_bytes());
}

#[test]
fn aclimdb_labels_from_folders_ids_from_file_names() {
    let t = tempfile::tempdir().unwrap();
    imdb(t.path());
    let ds = load_aclimdb(t.path(), "train").unwrap();
    assert_eq!(ds.labels, vec![0, 0, 1]);
    assert_eq!(ds.ids, vec!["10_2", "3_1", "7_9"]);
    assert_eq!(ds.texts[2], "A delight — superb cast.");
    assert_eq!(ds.lossy, 0);
}

#[test]
fn bad_review_files() {
    let t = tempfile::tempdir().unwrap();
    imdb(t.path());
    // Invalid UTF-8 is kept, with replacement characters, and counted.
    write(&t.path().join("train/pos/8_8.txt"), b"caf\xe9 scene was great");
    let ds = load_aclimdb(t.path(), "train").unwrap();
    assert_eq!(ds.lossy, 1);
    assert!(ds.texts[3].contains("caf\u{fffd} scene"));
    // Empty and binary files are errors naming the file.
    write(&t.path().join("train/pos/9_7.txt"), b"  \n");
    let e = load_aclimdb(t.path(), "train").unwrap_err().to_string();
    assert!(e.contains("9_7.txt") && e.contains("empty"), "{e}");
    write(&t.path().join("train/pos/9_7.txt"), b"PK\x03\x04\x00\x00binary");
    let e = load_aclimdb(t.path(), "train").unwrap_err().to_string();
    assert!(e.contains("9_7.txt") && e.contains("binary"), "{e}");
    assert!(load_aclimdb(t.path(), "test").is_err());
}

fn eli5_files(dir: &Path) -> Vec<PathBuf> {
    let json = r#"[{"q_id": "a1", "category": "Physics", "title": "Why is the sky blue?", "selftext": "", "answers": {"a_id": ["x"], "text": ["Rayleigh scattering."]}},
                   {"q_id": "a2", "category": "Biology", "title": "Why do we sleep?", "selftext": "Really, why?", "answers": {"a_id": [], "text": []}}]"#;
    let p1 = dir.join("eli5.json.gz");
    let mut e = flate2::write::GzEncoder::new(
        std::fs::File::create(&p1).unwrap(),
        flate2::Compression::fast(),
    );
    e.write_all(json.as_bytes()).unwrap();
    e.finish().unwrap();
    let jsonl = "{\"q_id\": \"b1\", \"category\": \"Physics\", \"title\": \"How do magnets work?\", \"selftext\": \"\"}\n\n{\"q_id\": \"b2\", \"category\": \"Physics\", \"title\": \"What is mass?\"}\n{\"q_id\": \"a1\", \"category\": \"Physics\", \"title\": \"Why is the sky blue?\"}\n";
    let p2 = dir.join("q.jsonl");
    write(&p2, jsonl.as_bytes());
    vec![p1, p2]
}

#[test]
fn eli5_json_and_jsonl() {
    let t = tempfile::tempdir().unwrap();
    let files = eli5_files(t.path());
    let qs = read_eli5(&files[0]).unwrap();
    assert_eq!(qs.len(), 2);
    assert_eq!(qs[0].first_answer.as_deref(), Some("Rayleigh scattering."));
    assert_eq!(qs[0].text(true), "Why is the sky blue?\nRayleigh scattering.");
    assert_eq!(qs[1].text(true), "Why do we sleep?\nReally, why?");
    assert_eq!(read_eli5(&files[1]).unwrap().len(), 3);

    let ds = eli5_experiment_set(&files, &[], 10, 1000, true, 0).unwrap();
    assert_eq!(ds.class_names, vec!["Biology", "Physics"]);
    assert_eq!(ds.len(), 4, "a1 appears in both files and is kept once");
    let one = eli5_experiment_set(&files, &["Physics".into()], 10, 2, false, 0).unwrap();
    assert_eq!((one.len(), one.class_names.clone()), (2, vec!["Physics".to_string()]));
    assert_eq!(
        one,
        eli5_experiment_set(&files, &["Physics".into()], 10, 2, false, 0).unwrap(),
        "seeded"
    );
    let top1 = eli5_experiment_set(&files, &[], 1, 1000, false, 0).unwrap();
    assert_eq!(top1.class_names, vec!["Physics"]);
}

#[test]
fn eli5_errors_name_file_and_record() {
    let t = tempfile::tempdir().unwrap();
    let files = eli5_files(t.path());
    let e = eli5_experiment_set(&files, &["Astrology".into()], 10, 10, false, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown category `Astrology`") && e.contains("Physics"), "{e}");
    let p = t.path().join("bad.jsonl");
    write(&p, b"{\"q_id\": \"c1\", \"category\": \"Physics\", \"title\": \"ok\"}\n{\"q_id\": \"c2\", \"title\": \"no category\"}\n");
    let e = read_eli5(&p).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl") && e.contains("line 2") && e.contains("`category`"), "{e}");
    write(&p, b"[{\"q_id\": 1}");
    assert!(read_eli5(&p).unwrap_err().to_string().contains("invalid JSON"));
}
