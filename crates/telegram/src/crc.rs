//! CRC-16/ARC, the checksum DSMR 4 and 5 put after `!`.

use crc::{CRC_16_ARC, Crc, Table};

/// Slice-by-16 tables: measured about ten times the speed of the crate's default single table
/// on the telegram hot path, for 8 KiB of tables.
static ARC: Crc<u16, Table<16>> = Crc::<u16, Table<16>>::new(&CRC_16_ARC);

/// CRC-16/ARC of `bytes` (poly 0x8005 reflected, init 0, no final xor).
pub fn crc16(bytes: &[u8]) -> u16 {
    ARC.checksum(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn check_value_of_the_catalogue() {
        assert_eq!(super::crc16(b"123456789"), 0xBB3D);
    }
}
