//! Which glibc a Linux binary needs: the highest `GLIBC_x.y` among the symbol versions its
//! ELF `.gnu.version_r` section requires. A binary linked on a newer distribution than the
//! Functions host image does not start there ("version `GLIBC_2.34' not found"), so
//! `tunelake package` refuses it rather than deploy an app that never answers.

use std::path::Path;

use crate::error::{Error, Result};

const SHT_GNU_VERNEED: u32 = 0x6fff_fffe;

/// A glibc version, `(major, minor)`.
pub type Version = (u32, u32);

/// Parses `2.28` into a version.
pub fn parse_version(text: &str) -> Option<Version> {
    let (major, minor) = text.trim().split_once('.')?;
    let minor = minor.split('.').next()?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The highest glibc version the ELF binary at `path` requires; `None` for a binary that
/// needs none (static, or musl).
pub fn required(path: &Path) -> Result<Option<Version>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    highest(&bytes).map_err(|message| Error::BadArgument {
        what: path.display().to_string(),
        message: format!("not a 64-bit little-endian ELF binary for Linux: {message}"),
    })
}

fn highest(elf: &[u8]) -> std::result::Result<Option<Version>, String> {
    if elf.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1]) {
        return Err("bad ELF header".to_string());
    }
    let shoff = u64_at(elf, 0x28)? as usize;
    let shentsize = u16_at(elf, 0x3a)? as usize;
    let shnum = u16_at(elf, 0x3c)? as usize;
    let section = |i: usize| shoff + i * shentsize;
    let mut best: Option<Version> = None;
    for i in 0..shnum {
        let header = section(i);
        if u32_at(elf, header + 4)? != SHT_GNU_VERNEED {
            continue;
        }
        let offset = u64_at(elf, header + 24)? as usize;
        let strings = u64_at(elf, section(u32_at(elf, header + 40)? as usize) + 24)? as usize;
        let count = u32_at(elf, header + 44)?;
        let mut need = offset;
        for _ in 0..count {
            let (aux_count, mut aux) = (
                u16_at(elf, need + 2)?,
                need + u32_at(elf, need + 8)? as usize,
            );
            for _ in 0..aux_count {
                let name = c_string(elf, strings + u32_at(elf, aux + 8)? as usize)?;
                if let Some(version) = name.strip_prefix("GLIBC_").and_then(parse_version) {
                    best = best.max(Some(version));
                }
                aux += u32_at(elf, aux + 12)? as usize;
            }
            need += u32_at(elf, need + 12)? as usize;
        }
    }
    Ok(best)
}

fn field<const N: usize>(elf: &[u8], at: usize) -> std::result::Result<[u8; N], String> {
    elf.get(at..at + N)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("truncated at byte {at}"))
}

fn u16_at(elf: &[u8], at: usize) -> std::result::Result<u16, String> {
    field(elf, at).map(u16::from_le_bytes)
}

fn u32_at(elf: &[u8], at: usize) -> std::result::Result<u32, String> {
    field(elf, at).map(u32::from_le_bytes)
}

fn u64_at(elf: &[u8], at: usize) -> std::result::Result<u64, String> {
    field(elf, at).map(u64::from_le_bytes)
}

fn c_string(elf: &[u8], at: usize) -> std::result::Result<&str, String> {
    let rest = elf
        .get(at..)
        .ok_or_else(|| format!("no string at byte {at}"))?;
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn a_glibc_binary_needs_at_least_the_x86_64_baseline() {
        let exe = std::env::current_exe().unwrap();
        let needed = required(&exe).unwrap().expect("a glibc build needs glibc");
        assert!(needed >= (2, 2), "{needed:?}");
        assert!(needed < (3, 0), "{needed:?}");
    }

    #[test]
    fn versions_parse_and_non_elf_input_is_refused() {
        assert_eq!(parse_version("2.28"), Some((2, 28)));
        assert_eq!(parse_version("2.2.5"), Some((2, 2)));
        assert_eq!(parse_version("two"), None);
        assert!(highest(b"#!/bin/sh\n").is_err());
        let mut truncated = vec![0x7f, b'E', b'L', b'F', 2, 1];
        truncated.resize(0x30, 0);
        assert!(highest(&truncated).unwrap_err().contains("truncated"));
    }
}
