//! Writes the distilled token table (`static-embeddings.safetensors`) of a sentence-embedding
//! model directory: run once by `scripts/fetch-models.sh`, shipped in the model's package.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut arguments = std::env::args_os().skip(1);
    let (Some(directory), None) = (arguments.next(), arguments.next()) else {
        eprintln!("usage: synos-distil-embeddings MODEL_DIRECTORY");
        return ExitCode::from(64);
    };
    let directory = PathBuf::from(directory);
    let target = directory.join(synos_embedding::STATIC_TABLE_FILE);
    let started = std::time::Instant::now();
    let result = synos_embedding::Embedder::load(&directory)
        .and_then(|embedder| synos_embedding::StaticEmbedder::distil(&embedder, &target));
    match result {
        Ok(()) => {
            eprintln!(
                "{}: distilled in {:.0?}",
                target.display(),
                started.elapsed()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("synos-distil-embeddings: {error}");
            ExitCode::from(1)
        }
    }
}
