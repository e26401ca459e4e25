//! CRC-16/ARC, the checksum DSMR 4 and 5 put after `!`.

use crc_fast::CrcAlgorithm;

/// CRC-16/ARC of `bytes` (poly 0x8005 reflected, init 0, no final xor).
///
/// By carry-less multiplication where the CPU has it (x86-64's PCLMULQDQ, AArch64's PMULL):
/// measured at about three times the speed of slice-by-16 tables on a 1 KB telegram. By those
/// tables where it has not (a Raspberry Pi 4).
pub fn crc16(bytes: &[u8]) -> u16 {
    // A CRC-16 is below 2^16; the crate returns every width as a u64.
    crc_fast::checksum(CrcAlgorithm::Crc16Arc, bytes) as u16
}

#[cfg(test)]
mod tests {
    use crc::{CRC_16_ARC, Crc, Table};
    use proptest::prelude::*;

    #[test]
    fn check_value_of_the_catalogue() {
        assert_eq!(super::crc16(b"123456789"), 0xBB3D);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The `crc` crate's table-driven CRC-16/ARC is the reference, at every length: the
        /// carry-less multiply works in blocks of 16 bytes and more, with a tail.
        #[test]
        fn agrees_with_table_driven_crc(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
            let reference = Crc::<u16, Table<1>>::new(&CRC_16_ARC).checksum(&bytes);
            prop_assert_eq!(super::crc16(&bytes), reference);
        }
    }
}
