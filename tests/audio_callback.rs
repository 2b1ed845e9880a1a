//! The audio callback's work never allocates or frees (issue 7): a counting allocator watches
//! this test's thread while the player renders buffers through loads, plays, seeks and loops.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use diffusion_studio::audio::playback::{Command, NullOutput, player};

struct Counting;

// A global allocator can only be written with unsafe: it forwards every call to the system
// allocator unchanged and only counts the calls made on a watched thread.

static CALLS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static WATCHING: Cell<bool> = const { Cell::new(false) };
}

#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WATCHING.with(Cell::get) {
            CALLS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if WATCHING.with(Cell::get) {
            CALLS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn rendering_never_allocates_or_frees() {
    let (player, transport) = player();
    let mut output = NullOutput::new(player, 48_000, "test");
    let mut buffer = vec![0f32; 512 * 2];
    let clip = |n: usize| -> std::sync::Arc<[f32]> {
        (0..n).map(|i| (i as f32 * 0.01).sin()).collect::<Vec<_>>().into()
    };
    let (a, b) = (clip(48_000), clip(24_000));
    let mut count = |work: &mut dyn FnMut(&mut NullOutput)| {
        WATCHING.with(|w| w.set(true));
        work(&mut output);
        WATCHING.with(|w| w.set(false));
    };
    // commands are sent (and allocated) on the UI side, outside the watch
    transport.send(Command::Load(a));
    transport.send(Command::Play);
    count(&mut |output| {
        for _ in 0..50 {
            output.player.render(&mut buffer, 2);
        }
    });
    transport.send(Command::Loop(Some((1_000, 3_000))));
    transport.send(Command::Seek(2_500));
    transport.send(Command::Load(b)); // replaces a: the callback must hand it back, not free it
    transport.send(Command::Play);
    count(&mut |output| {
        for _ in 0..200 {
            output.player.render(&mut buffer, 2);
        }
    });
    assert_eq!(CALLS.load(Ordering::Relaxed), 0, "the callback allocated or freed");
    assert!(transport.send(Command::Pause), "the replaced clip is collected on this side");
}
