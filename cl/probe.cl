/*
 * probe.cl - what the placement planner measures of a device once (and
 * caches): how fast its kernels read global memory.
 *
 *   probe_read: each work-item sums a strided share of SRC, float4 at a
 *   time, so consecutive work-items read consecutive 16-byte words (one
 *   coalesced stream on a GPU); OUT keeps the sums so the reads are not
 *   optimised away.
 */
__kernel void probe_read(__global const float4 *src, __global float *out, const int n4) {
    const int gid = (int)get_global_id(0), gs = (int)get_global_size(0);
    float4 acc = (float4)(0.0f);
    for (int i = gid; i < n4; i += gs) acc += src[i];
    out[gid] = acc.x + acc.y + acc.z + acc.w;
}

/* The same for CPU devices, where a work-item is a loop on one core: each
 * reads one contiguous chunk, which the core's prefetchers stream. */
__kernel void probe_read_chunks(__global const float4 *src, __global float *out, const int n4) {
    const int gid = (int)get_global_id(0), gs = (int)get_global_size(0);
    const int chunk = (n4 + gs - 1) / gs, end = min(n4, (gid + 1) * chunk);
    float4 acc = (float4)(0.0f);
    for (int i = gid * chunk; i < end; i++) acc += src[i];
    out[gid] = acc.x + acc.y + acc.z + acc.w;
}
