//! A writer for the "newc" cpio format (magic `070701`), the one the kernel unpacks as an initramfs.
//!
//! Only what an initramfs needs: directories, character devices and regular files, all owned by
//! root with mtime 0 so the same inputs give the same bytes. It must never read the host's
//! filesystem metadata: every mode and device number is what the caller asked for.
use std::io::{self, Write};

const MAGIC: &str = "070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFREG: u32 = 0o100_000;

/// Writes entries in order, then the trailer on [`Writer::finish`].
pub struct Writer<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    /// A directory with permission bits `perm` (e.g. 0o755).
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.entry(path, S_IFDIR | perm, 2, (0, 0), &[])
    }

    /// A character device node `major:minor`.
    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(path, S_IFCHR | perm, 1, (major, minor), &[])
    }

    /// A regular file holding `data`.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | perm, 1, (0, 0), data)
    }

    /// Writes the `TRAILER!!!` entry and hands back the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(0, 0, 1, (0, 0), TRAILER, 0)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        // Archive names are relative to the root the kernel unpacks into, as gen_init_cpio writes them.
        let name = path.trim_start_matches('/');
        if name.is_empty() || name.contains('\0') || name == TRAILER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path:?} cannot be a cpio entry name"),
            ));
        }
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path} is larger than newc's 4 GiB limit"),
            )
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(ino, mode, nlink, rdev, name, size)?;
        self.out.write_all(data)?;
        self.written += u64::from(size);
        self.pad()
    }

    fn header(
        &mut self,
        ino: u32,
        mode: u32,
        nlink: u32,
        (rdev_major, rdev_minor): (u32, u32),
        name: &str,
        size: u32,
    ) -> io::Result<()> {
        let name_size = u32::try_from(name.len() + 1).expect("entry names are short");
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev_major, rdev_minor, name_size, 0,
        ];
        let mut header = String::with_capacity(HEADER_LEN);
        header.push_str(MAGIC);
        for field in fields {
            header.push_str(&format!("{field:08X}"));
        }
        debug_assert_eq!(header.len(), HEADER_LEN);
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.written += (HEADER_LEN + name.len() + 1) as u64;
        self.pad()
    }

    /// Header plus name, and file data, each end on a 4-byte boundary.
    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - self.written % 4) % 4;
        self.out.write_all(&[0; 3][..pad as usize])?;
        self.written += pad;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    #[derive(Debug, PartialEq)]
    struct Entry {
        name: String,
        ino: u32,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    /// An independent reader: checks magic, field syntax, the zero padding and alignment.
    fn parse(archive: &[u8]) -> Vec<Entry> {
        let mut entries = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(at % 4, 0, "entry at {at} is not 4-byte aligned");
            let header = std::str::from_utf8(&archive[at..at + HEADER_LEN]).unwrap();
            assert_eq!(&header[..6], "070701", "bad magic at {at}");
            let field = |i: usize| {
                let hex = &header[6 + 8 * i..6 + 8 * (i + 1)];
                assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "field {i} is {hex:?}");
                u32::from_str_radix(hex, 16).unwrap()
            };
            let (size, name_size) = (field(6) as usize, field(11) as usize);
            assert_eq!([field(2), field(3), field(5)], [0, 0, 0], "uid, gid, mtime");
            let name_start = at + HEADER_LEN;
            let name = &archive[name_start..name_start + name_size];
            assert_eq!(name.last(), Some(&0), "name is not NUL-terminated");
            let name = String::from_utf8(name[..name_size - 1].to_vec()).unwrap();
            let data_start = (name_start + name_size).next_multiple_of(4);
            assert!(
                archive[name_start + name_size..data_start]
                    .iter()
                    .all(|&b| b == 0)
            );
            let data_end = data_start + size;
            let next = data_end.next_multiple_of(4);
            assert!(archive[data_end..next].iter().all(|&b| b == 0));
            at = next;
            if name == TRAILER {
                assert_eq!(at, archive.len(), "bytes after the trailer");
                return entries;
            }
            entries.push(Entry {
                name,
                ino: field(0),
                mode: field(1),
                nlink: field(4),
                rdev: (field(9), field(10)),
                data: archive[data_start..data_end].to_vec(),
            });
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new());
        w.dir("/dev", 0o755).unwrap();
        w.char_device("/dev/console", 0o600, 5, 1).unwrap();
        // Lengths 0, 1, 5 and 8 cover every padding remainder.
        w.file("/init", 0o755, b"12345").unwrap();
        w.file("/bin/a", 0o644, b"").unwrap();
        w.file("/bin/bb", 0o755, b"x").unwrap();
        w.file("/bin/ccc", 0o755, b"8 bytes!").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn entries_read_back_with_modes_devices_and_data() {
        let entries = parse(&sample());
        let summary: Vec<_> = entries
            .iter()
            .map(|e| (e.name.as_str(), e.mode, e.nlink, e.rdev, e.data.as_slice()))
            .collect();
        assert_eq!(
            summary,
            [
                ("dev", 0o040_755, 2, (0, 0), &b""[..]),
                ("dev/console", 0o020_600, 1, (5, 1), b""),
                ("init", 0o100_755, 1, (0, 0), b"12345"),
                ("bin/a", 0o100_644, 1, (0, 0), b""),
                ("bin/bb", 0o100_755, 1, (0, 0), b"x"),
                ("bin/ccc", 0o100_755, 1, (0, 0), b"8 bytes!"),
            ]
        );
        let mut inodes: Vec<u32> = entries.iter().map(|e| e.ino).collect();
        inodes.sort_unstable();
        inodes.dedup();
        assert_eq!(inodes.len(), entries.len(), "inode numbers must be unique");
        assert!(!inodes.contains(&0));
    }

    #[test]
    fn the_same_entries_give_the_same_bytes() {
        assert_eq!(sample(), sample());
    }

    #[test]
    fn rejects_names_the_kernel_would_misread() {
        let mut w = Writer::new(Vec::new());
        assert!(w.dir("/", 0o755).is_err());
        assert!(w.file("TRAILER!!!", 0o644, b"").is_err());
        assert!(w.file("a\0b", 0o644, b"").is_err());
    }

    /// GNU cpio, when installed, must list the archive the way we meant it.
    #[test]
    fn gnu_cpio_reads_it_when_installed() {
        let child = Command::new("cpio")
            .args(["-itv", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            println!("cpio is not installed; skipped");
            return;
        };
        child.stdin.take().unwrap().write_all(&sample()).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success());
        let listing = String::from_utf8(output.stdout).unwrap();
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 6, "{listing}");
        assert!(
            lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with(" dev"),
            "{listing}"
        );
        assert!(lines[1].starts_with("crw-------"), "{listing}");
        assert!(
            lines[1].contains("5,") && lines[1].ends_with(" dev/console"),
            "{listing}"
        );
        assert!(
            lines[2].starts_with("-rwxr-xr-x") && lines[2].ends_with(" init"),
            "{listing}"
        );
    }
}
