//! The tiny guest's pure logic (order parsing, touch planning) compiled for
//! the host so its unit tests run with the rest of the suite. The guest
//! itself is `no_std`; these two modules use nothing from it.

#[allow(dead_code)]
#[path = "../../resources/tiny-guest/src/cmdline.rs"]
mod cmdline;

#[allow(dead_code)]
#[path = "../../resources/tiny-guest/src/memtest.rs"]
mod memtest;

#[allow(dead_code)]
#[path = "../../resources/tiny-guest/src/pool.rs"]
mod pool;

#[allow(dead_code)]
#[path = "../../resources/tiny-guest/src/virtqueue.rs"]
mod virtqueue;
