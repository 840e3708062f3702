//! dm-verity hash trees and superblocks (cryptsetup `veritysetup format` compatible).
