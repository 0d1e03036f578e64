//! `tunelake package`: the deployable Function App, as a folder and a zip for zip deploy:
//! `host.json`, one folder per function with its `function.json`, this very binary (build it
//! for Linux x86-64 on an old glibc, see docs/deploy.md), and the pipeline: `pipeline.toml` and
//! `templates/`, which `serve` reads from the app root, so a metadata change is a new package,
//! not a new build. The JSON files are built into the binary, so a package always matches the
//! code that serves it.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `host.json` and the function definitions, as in the repository.
pub const FILES: [(&str, &str); 9] = [
    ("host.json", include_str!("../../host.json")),
    (
        "ingest/function.json",
        include_str!("../../functions/ingest/function.json"),
    ),
    (
        "silver/function.json",
        include_str!("../../functions/silver/function.json"),
    ),
    (
        "catchup/function.json",
        include_str!("../../functions/catchup/function.json"),
    ),
    (
        "gold/function.json",
        include_str!("../../functions/gold/function.json"),
    ),
    (
        "alert/function.json",
        include_str!("../../functions/alert/function.json"),
    ),
    (
        "query/function.json",
        include_str!("../../functions/query/function.json"),
    ),
    (
        "refresh/function.json",
        include_str!("../../functions/refresh/function.json"),
    ),
    (
        "maintain/function.json",
        include_str!("../../functions/maintain/function.json"),
    ),
];

/// `local.settings.json`, as in the repository: in the package folder, not in the zip.
pub const LOCAL_SETTINGS: (&str, &str) = (
    "local.settings.json",
    include_str!("../../local.settings.json"),
);

/// The executable's name in the package (host.json's `defaultExecutablePath`).
pub const EXECUTABLE: &str = "tunelake";

/// The pipeline a package carries: the pipeline file's text and every view template.
pub struct PipelineFiles {
    pub pipeline_toml: String,
    pub templates: Vec<(String, String)>,
    /// The files of local `files:` sources, by their path relative to the app root.
    pub sources: Vec<(String, Vec<u8>)>,
}

/// The pipeline file's name in the package (what `serve` finds in the app root).
pub const PIPELINE: &str = "pipeline.toml";

/// Writes `<out>/app/` and `<out>/tunelake-functions.zip`; returns the zip's path.
pub fn build(out: &Path, binary: &Path, pipeline: &PipelineFiles) -> Result<PathBuf> {
    let app = out.join("app");
    if app.exists() {
        std::fs::remove_dir_all(&app).map_err(|e| Error::io(&app, e))?;
    }
    let binary_bytes = std::fs::read(binary).map_err(|e| Error::io(binary, e))?;
    let mut entries: Vec<(String, Vec<u8>, u32)> = FILES
        .iter()
        .map(|(name, text)| (name.to_string(), text.as_bytes().to_vec(), 0o644))
        .collect();
    entries.push((
        PIPELINE.to_string(),
        pipeline.pipeline_toml.as_bytes().to_vec(),
        0o644,
    ));
    for (name, text) in &pipeline.templates {
        entries.push((format!("templates/{name}"), text.as_bytes().to_vec(), 0o644));
    }
    for (name, bytes) in &pipeline.sources {
        entries.push((name.clone(), bytes.clone(), 0o644));
    }
    entries.push((EXECUTABLE.to_string(), binary_bytes, 0o755));
    for (name, bytes, mode) in &entries {
        let path = app.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
        set_mode(&path, *mode)?;
    }
    // For `func start` in the folder (Core Tools reads it; Azure ignores it, so the zip
    // leaves it out): local, non-secret defaults only.
    let local = app.join(LOCAL_SETTINGS.0);
    std::fs::write(&local, LOCAL_SETTINGS.1).map_err(|e| Error::io(&local, e))?;
    let zip_path = out.join("tunelake-functions.zip");
    let file = std::fs::File::create(&zip_path).map_err(|e| Error::io(&zip_path, e))?;
    write_zip(std::io::BufWriter::new(file), &entries)
        .map_err(|e| Error::io(&zip_path, std::io::Error::other(e)))?;
    Ok(zip_path)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(path, e))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> Result<()> {
    Ok(())
}

/// A zip archive of the entries (deflated, with Unix modes so the binary stays executable
/// after zip deploy).
fn write_zip(
    out: impl Write + std::io::Seek,
    entries: &[(String, Vec<u8>, u32)],
) -> zip::result::ZipResult<()> {
    let mut zip = zip::ZipWriter::new(out);
    for (name, bytes, mode) in entries {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            // The binary is nearly all of it, and the fastest level costs little size
            // (docs/decisions/007, "Packaging").
            .compression_level(Some(1))
            .unix_permissions(*mode)
            .large_file(bytes.len() as u64 >= u64::from(u32::MAX));
        zip.start_file(name.as_str(), options)?;
        zip.write_all(bytes)?;
    }
    zip.finish()?.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_reads_back_with_its_files_and_modes() {
        let entries = vec![
            ("host.json".to_string(), b"{}".to_vec(), 0o644),
            (
                "silver/function.json".to_string(),
                vec![b'x'; 10_000],
                0o644,
            ),
            (
                EXECUTABLE.to_string(),
                (0..=255u8).cycle().take(70_000).collect(),
                0o755,
            ),
        ];
        let mut bytes = std::io::Cursor::new(Vec::new());
        write_zip(&mut bytes, &entries).unwrap();
        let mut archive = zip::ZipArchive::new(bytes).unwrap();
        assert_eq!(archive.len(), entries.len());
        for (name, content, mode) in &entries {
            let mut file = archive.by_name(name).unwrap();
            assert_eq!(file.compression(), zip::CompressionMethod::Deflated);
            assert_eq!(file.unix_mode().map(|m| m & 0o777), Some(*mode), "{name}");
            let mut read = Vec::new();
            std::io::Read::read_to_end(&mut file, &mut read).unwrap();
            assert_eq!(&read, content, "{name}");
        }
    }

    #[test]
    fn every_function_folder_is_packaged_and_served() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut folders: Vec<String> = std::fs::read_dir(root.join("functions"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        folders.sort();
        let mut routes: Vec<String> = super::super::FUNCTIONS
            .iter()
            .map(|s| s.to_string())
            .collect();
        routes.sort();
        assert_eq!(
            folders, routes,
            "functions/ folders and the handler's routes"
        );
        let mut packaged: Vec<String> = FILES
            .iter()
            .filter_map(|(n, _)| n.strip_suffix("/function.json").map(String::from))
            .collect();
        packaged.sort();
        assert_eq!(packaged, routes);
        let host: serde_json::Value = serde_json::from_str(FILES[0].1).unwrap();
        assert_eq!(
            host["customHandler"]["description"]["defaultExecutablePath"],
            EXECUTABLE
        );
        assert_eq!(
            host["customHandler"]["description"]["arguments"][0],
            "serve"
        );
        assert_eq!(host["extensionBundle"]["version"], "[4.*, 5.0.0)");
        for (name, text) in FILES {
            serde_json::from_str::<serde_json::Value>(text)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn every_app_setting_a_function_names_is_set_locally_and_in_azure() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let local: serde_json::Value = serde_json::from_str(LOCAL_SETTINGS.1).unwrap();
        let bicep = std::fs::read_to_string(root.join("infra/modules/functionapp.bicep")).unwrap();
        let mut named = 0;
        for (file, text) in FILES.iter().skip(1) {
            for setting in text.split('%').skip(1).step_by(2) {
                named += 1;
                assert!(
                    local["Values"][setting].is_string(),
                    "{file} names %{setting}%, which local.settings.json does not set"
                );
                assert!(
                    bicep.contains(&format!("name: '{setting}'")),
                    "{file} names %{setting}%, which the Function App's settings lack"
                );
            }
        }
        assert!(named >= 3, "the timers' schedules are app settings");
    }
}
