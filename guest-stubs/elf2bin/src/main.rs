//! carve-elf2bin: a guest stub's ELF to the flat image carve copies into guest RAM.
//!
//!     carve-elf2bin STUB.elf STUB.bin
//!
//! carve copies a `multiboot,kernel` module byte for byte to guest IPA base +
//! 0x10000 and jumps to its first byte, so a stub must be a flat image: the
//! file contents of its loadable segments (ELF PT_LOAD, `p_filesz` bytes at
//! `p_paddr`), in address order, gaps filled with zeros, starting at the
//! lowest address, which must be the ELF's entry point. `.bss` (memory
//! beyond `p_filesz`) is not written: the stub clears it itself. This is what
//! `objcopy -O binary` does, without needing an Arm-aware objcopy.
//! Only 32-bit little-endian ELF (armv7a-none-eabi) is accepted.

use std::process::ExitCode;

const PT_LOAD: u32 = 1;
/// A flat image larger than this means the segments are far apart: refuse rather than write gigabytes.
const MAX_IMAGE: u64 = 16 << 20;

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2).map(|w| u16::from_le_bytes([w[0], w[1]])).ok_or_else(|| format!("truncated at {at:#x}"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .ok_or_else(|| format!("truncated at {at:#x}"))
}

/// The flat image of a 32-bit little-endian ELF, and its load address.
fn flatten(elf: &[u8]) -> Result<(u64, Vec<u8>), String> {
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("not an ELF file".into());
    }
    if elf.get(4) != Some(&1) || elf.get(5) != Some(&1) {
        return Err("not a 32-bit little-endian ELF".into());
    }
    let entry = u64::from(u32_at(elf, 24)?);
    let phoff = u32_at(elf, 28)? as usize;
    let phentsize = usize::from(u16_at(elf, 42)?);
    let phnum = usize::from(u16_at(elf, 44)?);
    let mut segs = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(elf, ph)? != PT_LOAD {
            continue;
        }
        let (offset, paddr, filesz) =
            (u32_at(elf, ph + 4)? as usize, u64::from(u32_at(elf, ph + 12)?), u32_at(elf, ph + 16)? as usize);
        if filesz == 0 {
            continue;
        }
        let data = elf.get(offset..offset + filesz).ok_or_else(|| format!("segment {i} runs past the file"))?;
        segs.push((paddr, data));
    }
    segs.sort_by_key(|s| s.0);
    let first = segs.first().ok_or("no loadable segment with contents")?.0;
    if first != entry {
        return Err(format!("the image starts at {first:#x} but the entry point is {entry:#x}"));
    }
    let end = segs.iter().map(|s| s.0 + s.1.len() as u64).max().unwrap_or(first);
    if end - first > MAX_IMAGE {
        return Err(format!("segments span {:#x} bytes: more than a stub should", end - first));
    }
    let mut image = vec![0u8; (end - first) as usize];
    let mut filled = first;
    for (paddr, data) in segs {
        if paddr < filled {
            return Err(format!("segments overlap at {paddr:#x}"));
        }
        let at = (paddr - first) as usize;
        image[at..at + data.len()].copy_from_slice(data);
        filled = paddr + data.len() as u64;
    }
    Ok((first, image))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: carve-elf2bin STUB.elf STUB.bin");
        return ExitCode::from(2);
    };
    let result = std::fs::read(input)
        .map_err(|e| format!("{input}: {e}"))
        .and_then(|elf| flatten(&elf).map_err(|e| format!("{input}: {e}")))
        .and_then(|(_, image)| std::fs::write(output, image).map_err(|e| format!("{output}: {e}")));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("carve-elf2bin: {e}");
            ExitCode::FAILURE
        }
    }
}
