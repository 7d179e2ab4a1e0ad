//! CRC32C (Castagnoli), the iSCSI header and data digest (RFC 7143 §13.1, appendix B.4).
//!
//! The digest travels as the 4 bytes of the CRC in little-endian order, as Linux and libiscsi
//! send it. `crc32fast` computes the IEEE polynomial, not this one, hence the small table here.

const POLY: u32 = 0x82F6_3B78; // reflected 0x1EDC6F41

const TABLE: [[u32; 256]; 4] = build_tables();

const fn build_tables() -> [[u32; 256]; 4] {
    let mut t = [[0u32; 256]; 4];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut s = 1;
        while s < 4 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            s += 1;
        }
        i += 1;
    }
    t
}

/// Running CRC32C over several slices.
#[derive(Debug, Clone, Copy)]
pub struct Crc32c(u32);

impl Default for Crc32c {
    fn default() -> Self {
        Self(!0)
    }
}

impl Crc32c {
    pub fn update(&mut self, data: &[u8]) {
        let mut c = self.0;
        let mut chunks = data.chunks_exact(4);
        for w in &mut chunks {
            c ^= u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            c = TABLE[3][(c & 0xff) as usize]
                ^ TABLE[2][((c >> 8) & 0xff) as usize]
                ^ TABLE[1][((c >> 16) & 0xff) as usize]
                ^ TABLE[0][(c >> 24) as usize];
        }
        for &b in chunks.remainder() {
            c = (c >> 8) ^ TABLE[0][((c ^ u32::from(b)) & 0xff) as usize];
        }
        self.0 = c;
    }

    pub fn finish(self) -> u32 {
        !self.0
    }
}

/// CRC32C of one slice.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = Crc32c::default();
    c.update(data);
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // RFC 3720 appendix B.4 / iSCSI test vectors.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let inc: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&inc), 0x46DD_794E);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn incremental_matches_one_shot() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 256) as u8).collect();
        let mut c = Crc32c::default();
        c.update(&data[..3]);
        c.update(&data[3..517]);
        c.update(&data[517..]);
        assert_eq!(c.finish(), crc32c(&data));
    }
}
