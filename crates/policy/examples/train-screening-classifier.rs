//! Trains the screening classifier on labelled prompts and writes the weights the policy daemon
//! ships; with `--leave-one-source-out`, shows instead how it screens each source it was not
//! trained on, which is how its block probability was chosen.
//!
//! ```text
//! cargo run --release -p synos-policy --example train-screening-classifier
//! cargo run --release -p synos-policy --example train-screening-classifier -- --leave-one-source-out
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use synos_policy::classifier::{Classifier, Features};
use synos_policy::config::ScreeningConfig;
use synos_policy::screening::{self, Screener};
use synos_policy::semantic::SemanticStage;

#[derive(Parser)]
struct Arguments {
    /// Labelled prompts, one JSON object a line with `label`, `source` and `text`.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/screening/tuning.jsonl"))]
    prompts: PathBuf,
    /// Where the weights go.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/screening/classifier.safetensors"))]
    output: PathBuf,
    /// Train once per source without it and screen that source, instead of writing weights.
    #[arg(long)]
    leave_one_source_out: bool,
}

#[derive(serde::Deserialize)]
struct Prompt {
    label: String,
    source: String,
    text: String,
}

#[expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool"
)]
fn main() -> ExitCode {
    let arguments = Arguments::parse();
    match run(&arguments) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("train-screening-classifier: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(arguments: &Arguments) -> Result<String, String> {
    let text = std::fs::read_to_string(&arguments.prompts)
        .map_err(|error| format!("{}: {error}", arguments.prompts.display()))?;
    let prompts = text
        .lines()
        .enumerate()
        .map(|(index, line)| {
            serde_json::from_str::<Prompt>(line).map_err(|error| {
                format!(
                    "{} line {}: {error}",
                    arguments.prompts.display(),
                    index + 1
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let directory = synos_embedding::fetched_model_directory().join("all-MiniLM-L6-v2");
    let stage = Arc::new(
        SemanticStage::load(&directory)
            .map_err(|error| format!("{error} (run scripts/fetch-models.sh)"))?,
    );
    let examples = prompts
        .iter()
        .map(|prompt| {
            let features = stage
                .classifier_features(&screening::normalised(&prompt.text))
                .map_err(|error| error.to_string())?;
            Ok((features, prompt.label == "injection"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    if arguments.leave_one_source_out {
        return Ok(leave_one_source_out(&prompts, &examples, stage));
    }
    let started = std::time::Instant::now();
    let classifier = Classifier::train(&examples);
    let bytes = classifier
        .to_safetensors()
        .map_err(|error| error.to_string())?;
    std::fs::write(&arguments.output, bytes)
        .map_err(|error| format!("{}: {error}", arguments.output.display()))?;
    Ok(format!(
        "trained on {} prompts in {:.1} s: {}\n",
        examples.len(),
        started.elapsed().as_secs_f64(),
        arguments.output.display()
    ))
}

/// The library a prompt comes from: its source's first two parts, a later batch of the same
/// library ("…_rest", "…-rest") counted with it.
fn library(source: &str) -> String {
    let family = source.split('/').take(2).collect::<Vec<_>>().join("/");
    family
        .trim_end_matches("_rest")
        .trim_end_matches("-rest")
        .to_owned()
}

const PROBABILITIES: [f32; 6] = [0.5, 0.7, 0.8, 0.85, 0.9, 0.95];

/// For each library: trained on the others, what the classifier adds to the rules and the
/// exemplar bank at each candidate block probability.
fn leave_one_source_out(
    prompts: &[Prompt],
    examples: &[(Features, bool)],
    stage: Arc<SemanticStage>,
) -> String {
    // The packaged thresholds: what the daemon blocks with.
    let defaults = ScreeningConfig::default();
    let screener =
        Screener::new(defaults.flag_threshold, defaults.block_threshold).with_semantic_stage(stage);
    let blocked_without_classifier: Vec<bool> = prompts
        .iter()
        .map(|prompt| {
            let matched: Vec<_> = screener
                .screen(&prompt.text)
                .matched
                .into_iter()
                .filter(|found| found.rule.id != screening::CLASSIFIER_RULE_ID)
                .collect();
            screening::combined_score(&matched) >= defaults.block_threshold
        })
        .collect();
    let mut probabilities = vec![0.0_f32; prompts.len()];
    let libraries: BTreeMap<String, Vec<usize>> =
        prompts
            .iter()
            .enumerate()
            .fold(BTreeMap::new(), |mut libraries, (index, prompt)| {
                libraries
                    .entry(library(&prompt.source))
                    .or_insert_with(Vec::new)
                    .push(index);
                libraries
            });
    for members in libraries.values() {
        let training: Vec<(Features, bool)> = examples
            .iter()
            .enumerate()
            .filter(|(index, _)| !members.contains(index))
            .map(|(_, example)| example.clone())
            .collect();
        let classifier = Classifier::train(&training);
        for index in members {
            probabilities[*index] = classifier.probability(&examples[*index].0);
        }
    }
    let mut report = String::new();
    for threshold in PROBABILITIES {
        let mut added = [0_usize; 2];
        let mut rows = String::new();
        for (library, members) in &libraries {
            for label in ["injection", "benign"] {
                let of_label: Vec<usize> = members
                    .iter()
                    .copied()
                    .filter(|index| prompts[*index].label == label)
                    .collect();
                let before = of_label
                    .iter()
                    .filter(|index| blocked_without_classifier[**index])
                    .count();
                let after = of_label
                    .iter()
                    .filter(|index| {
                        blocked_without_classifier[**index] || probabilities[**index] >= threshold
                    })
                    .count();
                if after > before {
                    rows.push_str(&format!(
                        "    {library:<45} {label:<9} {before:>4} -> {after:>4} of {:>4}\n",
                        of_label.len()
                    ));
                }
            }
        }
        for (index, (_, is_injection)) in examples.iter().enumerate() {
            if !blocked_without_classifier[index] && probabilities[index] >= threshold {
                added[usize::from(*is_injection)] += 1;
            }
        }
        report.push_str(&format!(
            "block from probability {threshold}: {} injections and {} benign prompts more blocked\n{rows}",
            added[1], added[0]
        ));
    }
    report
}
