"""Run a function in W gloo processes on the CPU inside pytest (torch.multiprocessing.spawn, a
`file://` rendezvous in a temporary folder) and collect what each rank returns."""
import os
import pickle
import tempfile


def _rank_main(rank, world, init_file, out_dir, fn, args):
    import torch
    import torch.distributed as dist

    import drfast

    drfast.set_num_threads(1)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        dist.barrier()  # no rank tears gloo down while another still reads its last collective
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)


def spawn(world, fn, *args):
    """[fn(rank, world, *args) for each rank]: `fn` (a module-level function, picklable by name) runs in
    `world` spawned processes, each in the default gloo process group, with one torch thread each. An
    exception in a rank is raised here (torch.multiprocessing.ProcessRaisedException)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank_main, args=(world, os.path.join(tmp, "init"), tmp, fn, args), nprocs=world, join=True)
        out = []
        for r in range(world):
            with open(os.path.join(tmp, f"rank{r}.pkl"), "rb") as f:
                out.append(pickle.load(f))
        return out
