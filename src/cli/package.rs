//! The Function App's side of the command line: `tunelake package` (the deployable folder
//! and zip, with the pipeline, its templates and the folders of its `files:` sources) and where
//! `serve` finds its pipeline.

use std::path::{Path, PathBuf};

use super::Cli;
use crate::config::Pipeline;
use crate::error::{Error, Result};

/// Refuses a binary that needs a newer glibc than `max` (e.g. `2.28`).
fn check_glibc(binary: &std::path::Path, max: &str) -> Result<()> {
    use crate::functions::glibc;
    let bad = |message: String| Error::BadArgument {
        what: "--max-glibc".to_string(),
        message,
    };
    let max = glibc::parse_version(max)
        .ok_or_else(|| bad(format!("{max:?} is not a version like 2.28")))?;
    match glibc::required(binary)? {
        Some(needed) if needed > max => Err(bad(format!(
            "{} needs glibc {}.{}, newer than {}.{}: it would not start on the Functions host \
             image. Build it for an older glibc (docs/azure.md, \"The binary\"), or raise \
             --max-glibc if your host image has a newer one",
            binary.display(),
            needed.0,
            needed.1,
            max.0,
            max.1
        ))),
        _ => Ok(()),
    }
}

/// The pipeline file `serve` reads: `--config`, else the one packaged in the Function App's
/// root (`FUNCTIONS_APP_ROOT_PATH`, set by the host), else as every command finds it.
///
/// Under the host (`FUNCTIONS_APP_ROOT_PATH` set) the process first moves to the app root, so
/// the relative paths the packaged pipeline names (`files:reference`) resolve in the package
/// wherever the host started the process.
pub(super) fn serve_config(cli: &Cli) -> Result<Option<PathBuf>> {
    if let Some(root) = std::env::var_os("FUNCTIONS_APP_ROOT_PATH") {
        std::env::set_current_dir(&root).map_err(|e| Error::io(Path::new(&root), e))?;
        let file = Path::new(&root).join(crate::functions::package::PIPELINE);
        if cli.config.is_none() && file.is_file() {
            return Ok(Some(file));
        }
    }
    Ok(cli.config.clone())
}

/// The files of the pipeline's `files:` sources that are local relative folders, as
/// (path in the package, bytes): the app reads them from its root as this machine does here.
fn source_folders(pipeline: &Pipeline) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for (name, url) in &pipeline.sources {
        let Some(folder) = url.strip_prefix("files:") else {
            continue;
        };
        let path = Path::new(folder);
        if folder.starts_with("http://") || folder.starts_with("https://") || path.is_absolute() {
            continue;
        }
        if path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(Error::BadArgument {
                what: format!("sources.{name}.url"),
                message: format!("{url:?} leaves the package folder; name a folder inside it"),
            });
        }
        let mut dirs = vec![path.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| Error::BadArgument {
                what: format!("sources.{name}.url"),
                message: format!(
                    "{}: {e}: the app reads this folder from its root, so it goes in the package",
                    dir.display()
                ),
            })?;
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(&dir, e))?.path();
                if entry.is_dir() {
                    dirs.push(entry);
                } else {
                    let bytes = std::fs::read(&entry).map_err(|e| Error::io(&entry, e))?;
                    let inside = entry.to_string_lossy().replace('\\', "/");
                    files.push((inside.trim_start_matches("./").to_string(), bytes));
                }
            }
        }
    }
    files.sort();
    Ok(files)
}

/// `tunelake package`: the Function App as a folder and a zip, from this binary.
pub(super) fn package(cli: &Cli, out: &std::path::Path, max_glibc: &str) -> Result<bool> {
    let binary = std::env::current_exe().map_err(|e| Error::io("the running binary", e))?;
    check_glibc(&binary, max_glibc)?;
    // Loaded first: a pipeline file that does not validate is never packaged.
    let pipeline = Pipeline::load_or_default(cli.config.as_deref())?;
    let file = Pipeline::file_in_use(cli.config.as_deref());
    let pipeline_toml = match &file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?,
        None => crate::config::DEFAULT_PIPELINE.to_string(),
    };
    let templates = pipeline
        .templates
        .files()
        .map_err(|message| Error::BadArgument {
            what: "templates/".to_string(),
            message,
        })?;
    let files = crate::functions::package::PipelineFiles {
        pipeline_toml,
        templates,
        sources: source_folders(&pipeline)?,
    };
    let zip = crate::functions::package::build(out, &binary, &files)?;
    if cli.quiet {
        return Ok(true);
    }
    let size = std::fs::metadata(&zip).map(|m| m.len()).unwrap_or(0);
    out!(
        "Packaged {} ({:.1} MB) and {}/app/:",
        zip.display(),
        size as f64 / 1_048_576.0,
        out.display()
    );
    for (name, _) in crate::functions::package::FILES {
        out!("  {name}");
    }
    out!(
        "  {} (from {})",
        crate::functions::package::PIPELINE,
        file.as_ref()
            .map_or("the built-in pipeline".to_string(), |p| p
                .display()
                .to_string())
    );
    for (name, _) in &files.templates {
        out!("  templates/{name}");
    }
    for (name, _) in &files.sources {
        out!("  {name}");
    }
    out!(
        "  {} (from {})",
        crate::functions::package::EXECUTABLE,
        binary.display()
    );
    out!(
        "Deploy: az functionapp deployment source config-zip -g <group> -n <app> --src {}",
        zip.display()
    );
    Ok(true)
}
