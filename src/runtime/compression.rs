//! Archive decompression by file name, for the load stage (formats an engine reads
//! slowly or not at all) and for system containers' archives.

use std::io::{self, Read};

/// A reader that decompresses `inner` by the name's suffix (.tar is as is).
pub fn decompress(inner: impl Read + 'static, name: &str) -> io::Result<Box<dyn Read>> {
    Ok(if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Box::new(flate2::read::MultiGzDecoder::new(inner))
    } else if name.ends_with(".tar.xz") {
        Box::new(xz2::read::XzDecoder::new_multi_decoder(inner))
    } else if name.ends_with(".tar.bz2") {
        Box::new(bzip2::read::MultiBzDecoder::new(inner))
    } else if name.ends_with(".tar.zst") {
        Box::new(zstd::stream::read::Decoder::new(inner)?)
    } else {
        Box::new(inner)
    })
}
