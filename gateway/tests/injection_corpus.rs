//! The prompt-injection detector on the labelled corpus in `tests/data/`:
//! prints its detection and false-positive rates and holds them to floors.
//! Run with `-- --nocapture` to see the figures and the misses.

use std::path::Path;

use serde::Deserialize;
use tenantgate_gateway::policy::injection;

#[derive(Deserialize)]
struct Sample {
    label: String,
    family: String,
    text: String,
}

fn load(name: &str) -> Vec<Sample> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}:{}: {e}", i + 1)))
        .collect()
}

#[test]
fn detector_meets_its_floors_on_the_corpus() {
    let attacks = load("injection_attacks.jsonl");
    let benign = load("injection_benign.jsonl");
    assert!(attacks.len() >= 100 && benign.len() >= 100, "the corpus needs 100 of each");
    assert!(attacks.iter().all(|s| s.label == "attack") && benign.iter().all(|s| s.label == "benign"));

    let missed: Vec<&Sample> = attacks.iter().filter(|s| injection::detect(&s.text).is_none()).collect();
    let flagged: Vec<&Sample> = benign.iter().filter(|s| injection::detect(&s.text).is_some()).collect();
    let detected = attacks.len() - missed.len();
    let detection = 100.0 * detected as f64 / attacks.len() as f64;
    let false_positive = 100.0 * flagged.len() as f64 / benign.len() as f64;
    println!(
        "injection detector: attacks {detected}/{} detected ({detection:.1}%), benign {}/{} flagged ({false_positive:.1}%)",
        attacks.len(),
        flagged.len(),
        benign.len()
    );
    for family in ["override", "roleplay", "exfiltration", "delimiter", "encoded"] {
        let all = attacks.iter().filter(|s| s.family == family).count();
        let miss = missed.iter().filter(|s| s.family == family).count();
        println!("  {family}: {}/{all} detected", all - miss);
    }
    for s in &missed {
        println!("  missed [{}]: {}", s.family, s.text.escape_debug());
    }
    for s in &flagged {
        println!("  false positive [{}]: {}", s.family, s.text.escape_debug());
    }
    assert!(detection >= 90.0, "detection rate {detection:.1}% is below 90%");
    assert!(false_positive <= 5.0, "false-positive rate {false_positive:.1}% is above 5%");
}

fn rates(name: &str) -> (f64, f64) {
    let all = load(name);
    let (attacks, benign): (Vec<&Sample>, Vec<&Sample>) = all.iter().partition(|s| s.label == "attack");
    let detected = attacks.iter().filter(|s| injection::detect(&s.text).is_some()).count();
    let flagged: Vec<&&Sample> = benign.iter().filter(|s| injection::detect(&s.text).is_some()).collect();
    let detection = 100.0 * detected as f64 / attacks.len() as f64;
    let false_positive = 100.0 * flagged.len() as f64 / benign.len() as f64;
    println!(
        "injection detector ({name}): attacks {detected}/{} detected ({detection:.1}%), benign {}/{} flagged ({false_positive:.1}%)",
        attacks.len(),
        flagged.len(),
        benign.len()
    );
    for s in attacks.iter().filter(|s| injection::detect(&s.text).is_none()) {
        println!("  missed [{}]: {}", s.family, s.text.escape_debug());
    }
    for s in &flagged {
        println!("  false positive [{}]: {}", s.family, s.text.escape_debug());
    }
    (detection, false_positive)
}

/// A set written after the first rule revision, whose misses drove a second,
/// more general one (co-occurrence rules): no longer held out, kept as a regression set.
#[test]
fn detector_on_the_dev_set() {
    let (detection, false_positive) = rates("injection_dev.jsonl");
    assert!(detection >= 90.0, "dev-set detection rate {detection:.1}% is below 90%");
    assert!(false_positive <= 5.0, "dev-set false-positive rate {false_positive:.1}% is above 5%");
}

/// Written before the second revision and never used to change the rules:
/// the honest estimate of how the detector does on prompts it was not tuned
/// on. Its floors were set before its first run and are looser on purpose.
#[test]
fn detector_on_the_held_out_set() {
    let (detection, false_positive) = rates("injection_heldout.jsonl");
    assert!(detection >= 60.0, "held-out detection rate {detection:.1}% is below 60%");
    assert!(false_positive <= 10.0, "held-out false-positive rate {false_positive:.1}% is above 10%");
}
