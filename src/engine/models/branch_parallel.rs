//! Batch halves on two threads, for small UNets on the CPU.
//!
//! A UNet of a few million weights at a 16 × 16 latent is hundreds of small operations, and
//! libtorch's intra-op threads barely help them: on the 2-core Xeon the bundled shapes UNet takes
//! 12.6 ms a pass at batch 2 with two threads, 6.9 ms at batch 1 with one, and 7.5 ms when the two
//! halves of the batch run at once on two threads of one intra-op thread each (BENCHMARKS.md,
//! "classifier-free guidance on two threads"). So for such models classifier-free guidance's two
//! branches run side by side: the engine thread runs one half, this worker the other, on a
//! replica that shares the weights' storage (nothing is copied). Large UNets (Stable Diffusion's
//! 860 M weights) keep one batched pass, which intra-op threads already spread over the cores.

use crossbeam_channel::{Receiver, Sender};
use tch::Tensor;

use super::unet_2d_condition::UNet2DConditionModel;

/// UNets with at most this many weights get a branch worker on a CPU with two or more threads.
pub const MAX_WEIGHTS: i64 = 50_000_000;

struct Request {
    /// Matches the result to its request: a pass that panicked on this thread leaves its
    /// worker result unread, and the next pass must not take it for its own.
    id: u64,
    sample: Tensor,
    timestep: f64,
    context: Tensor,
}

/// A second thread running the UNet replica on part of a batch.
pub struct BranchWorker {
    requests: Option<Sender<Request>>,
    results: Receiver<(u64, Result<Tensor, String>)>,
    thread: Option<std::thread::JoinHandle<()>>,
    next_id: std::cell::Cell<u64>,
}

/// Sets libtorch's intra-op threads for this thread, and puts the old count back when dropped
/// (also when a pass panics).
struct Threads(i32);

impl Threads {
    fn set(count: i32) -> Self {
        let old = tch::get_num_threads();
        tch::set_num_threads(count);
        Self(old)
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        tch::set_num_threads(self.0);
    }
}

impl BranchWorker {
    /// Starts the worker on `replica` (a UNet sharing the weights of the one that will call it).
    pub fn start(replica: UNet2DConditionModel) -> std::io::Result<Self> {
        let (requests, incoming) = crossbeam_channel::bounded::<Request>(1);
        // unbounded: the worker never waits to hand over a result (one a panicked pass left
        // unread would otherwise block it, and the join when the model is dropped)
        let (outgoing, results) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new().name("unet-branch".into()).spawn(move || {
            tch::set_num_threads(1);
            for Request { id, sample, timestep, context } in incoming {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    replica.forward(&sample, timestep, &context).map_err(|e| e.to_string())
                }))
                .unwrap_or_else(|_| Err("the UNet branch thread panicked".into()));
                if outgoing.send((id, result)).is_err() {
                    break;
                }
            }
        })?;
        Ok(Self { requests: Some(requests), results, thread: Some(thread), next_id: std::cell::Cell::new(0) })
    }

    /// `forward(sample, timestep, context)` with the first `split` rows run by the worker and the
    /// rest by `local` on this thread (one intra-op thread each while both run), concatenated.
    pub fn forward(
        &self,
        local: &UNet2DConditionModel,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        split: i64,
    ) -> Result<Tensor, tch::TchError> {
        let batch = sample.size()[0];
        let rest = batch - split;
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        let (head, head_context) = (sample.f_narrow(0, 0, split)?, context.f_narrow(0, 0, split)?);
        let request =
            Request { id, sample: head.f_contiguous()?, timestep, context: head_context.f_contiguous()? };
        let sent = self.requests.as_ref().is_some_and(|requests| requests.send(request).is_ok());
        let mine = {
            let _one = Threads::set(1);
            local.forward_unsplit(
                &sample.f_narrow(0, split, rest)?,
                timestep,
                &context.f_narrow(0, split, rest)?,
            )
        };
        // the worker's answer to this request; an older pass's, left when that pass panicked
        // here, is skipped; a failed or missing one leaves the rows to this thread
        let theirs = if sent {
            loop {
                match self.results.recv() {
                    Ok((done, _)) if done < id => continue,
                    Ok((_, Ok(output))) => break Some(output),
                    Ok((_, Err(_))) | Err(_) => break None,
                }
            }
        } else {
            None
        };
        let theirs = match theirs {
            Some(output) => output,
            None => local.forward_unsplit(&head, timestep, &head_context)?,
        };
        Tensor::f_cat(&[&theirs, &mine?], 0)
    }
}

impl Drop for BranchWorker {
    fn drop(&mut self) {
        // closing the request channel ends the worker's loop
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
