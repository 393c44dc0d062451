// Data parallelism over the GPUs of one host with NCCL: one process per GPU. Processes come from mpirun
// (OMPI_COMM_WORLD_RANK/SIZE or PMI_RANK/PMI_SIZE in the environment; MPI itself is not linked) or from the
// built-in launcher (-N ranks: the process forks ranks - 1 children). They rendezvous through a file: rank 0
// writes NCCL's unique id to <folder>/nccl_id_<run>.bin atomically, the others wait for it (<run>: the
// launcher's pid, or mpirun's job id from its environment). Rank 0 removes the file once the communicator
// exists; only a run that died during start-up leaves one behind, which could mislead a later mpirun job
// with the same job id in the same folder. Gradients are summed over ranks in FP32 (ncclAllReduce) after
// the backward; every rank then applies the same update. A rank that dies mid-run leaves the others waiting
// in the all-reduce (stop them with Ctrl-C: every rank stops at the same step).
// Built without NCCL (make NO_MULTI_GPU=1) every call here is a no-op for one rank and an error for more.
#pragma once
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <string>
#include <vector>
#include "checkpoint.h"
#ifdef MULTI_GPU
#include <nccl.h>
#endif

#define RENDEZVOUS_TIMEOUT_SECONDS 120

struct MultiGpu {
    int rank = 0, ranks = 1;
    std::string run;              // names the rendezvous file of this run
    std::vector<pid_t> children;  // the built-in launcher's ranks 1.. (rank 0 only)
#ifdef MULTI_GPU
    ncclComm_t comm = nullptr;
#endif
};

// rank and rank count from mpirun's environment, if launched by it
inline bool multi_gpu_from_mpirun(MultiGpu* mg) {
    const char* pairs[][2] = {{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"}, {"PMI_RANK", "PMI_SIZE"}};
    for (auto& p : pairs) {
        const char *rank = getenv(p[0]), *size = getenv(p[1]);
        if (rank && size) {
            mg->rank = atoi(rank);
            mg->ranks = atoi(size);
            const char* job = getenv("OMPI_MCA_ess_base_jobid") ? getenv("OMPI_MCA_ess_base_jobid")
                              : getenv("PMIX_NAMESPACE") ? getenv("PMIX_NAMESPACE") : "mpirun";
            mg->run = job;
            return true;
        }
    }
    return false;
}

// the built-in launcher: forks ranks - 1 children; returns in every process with its rank set
inline bool multi_gpu_fork(MultiGpu* mg, int ranks) {
    mg->ranks = ranks;
    mg->run = std::to_string((long)getpid());
    for (int r = 1; r < ranks; r++) {
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); return false; }
        if (pid == 0) {
            mg->rank = r;
            mg->children.clear();
            return true;
        }
        mg->children.push_back(pid);
    }
    return true;
}

// rank 0 publishes `bytes` to path (temp file + rename, so a reader never sees half of it); the other ranks
// wait for it up to RENDEZVOUS_TIMEOUT_SECONDS. One-line error and false on failure.
inline bool rendezvous_exchange(const std::string& path, void* data, size_t bytes, int rank) {
    if (rank == 0) {
        int32_t header[256] = {0};
        header[0] = (int32_t)bytes;
        return write_file_atomic(path, header, {{data, bytes}});
    }
    for (int waited_ms = 0; waited_ms < RENDEZVOUS_TIMEOUT_SECONDS * 1000; waited_ms += 50) {
        FILE* f = fopen(path.c_str(), "rb");
        if (f) {
            int32_t header[256];
            bool ok = fread(header, sizeof header, 1, f) == 1 && header[0] == (int32_t)bytes &&
                      fread(data, 1, bytes, f) == bytes;
            fclose(f);
            if (ok) return true;
        }
        struct timespec pause = {0, 50 * 1000 * 1000};
        nanosleep(&pause, nullptr);
    }
    fprintf(stderr, "rank %d: no rendezvous file %s after %d s (did rank 0 start?)\n", rank, path.c_str(),
            RENDEZVOUS_TIMEOUT_SECONDS);
    return false;
}

// one NCCL communicator over all ranks (rank r on GPU r % devices); nothing for a single rank
inline bool multi_gpu_init(MultiGpu* mg, const std::string& rendezvous_folder) {
    if (mg->ranks == 1) return true;
#ifdef MULTI_GPU
    ncclUniqueId id;
    if (mg->rank == 0 && ncclGetUniqueId(&id) != ncclSuccess) { fprintf(stderr, "error: ncclGetUniqueId failed\n"); return false; }
    std::string path = rendezvous_folder + "/nccl_id_" + mg->run + ".bin";
    if (!rendezvous_exchange(path, &id, sizeof id, mg->rank)) return false;
    ncclResult_t result = ncclCommInitRank(&mg->comm, mg->ranks, id, mg->rank);
    if (mg->rank == 0) remove(path.c_str());  // every rank has read it once the communicator exists
    if (result != ncclSuccess) {
        fprintf(stderr, "error: rank %d: ncclCommInitRank: %s\n", mg->rank, ncclGetErrorString(result));
        return false;
    }
    return true;
#else
    (void)rendezvous_folder;
    fprintf(stderr, "error: %d ranks asked, but this train_int4 was built without NCCL (NO_MULTI_GPU=1)\n", mg->ranks);
    return false;
#endif
}

// in-place FP32 sum over ranks on stream (gradients, and the step's loss / stop flag)
inline void multi_gpu_sum(MultiGpu* mg, float* data, size_t count, cudaStream_t stream) {
    if (mg->ranks == 1) return;
#ifdef MULTI_GPU
    ncclResult_t result = ncclAllReduce(data, data, count, ncclFloat, ncclSum, mg->comm, stream);
    if (result != ncclSuccess) {
        fprintf(stderr, "error: rank %d: ncclAllReduce: %s\n", mg->rank, ncclGetErrorString(result));
        exit(EXIT_FAILURE);
    }
#else
    (void)data, (void)count, (void)stream;
#endif
}

// rank 0 waits for the launcher's children; the run fails if any rank failed
inline int multi_gpu_finish(MultiGpu* mg, int status) {
#ifdef MULTI_GPU
    if (mg->comm) ncclCommDestroy(mg->comm);
#endif
    for (pid_t pid : mg->children) {
        int child_status = 0;
        if (waitpid(pid, &child_status, 0) < 0 || !WIFEXITED(child_status) || WEXITSTATUS(child_status) != 0) {
            status = EXIT_FAILURE;
        }
    }
    return status;
}
