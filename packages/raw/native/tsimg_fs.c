/*
 * tsimg_fs: the few Linux host-file calls Node's fs lacks, for @tsimg/raw's FileDevice.
 *
 * - fcntl byte-range locks, open-file-description (F_OFD_SETLK/F_OFD_GETLK) or classic
 *   per-process (F_SETLK/F_GETLK), as qemu's util/osdep.c uses them for image locking;
 * - fallocate (punch hole, zero range);
 * - the block-device ioctls BLKGETSIZE64, BLKDISCARD and BLKZEROOUT;
 * - preadv2(RWF_NOWAIT), reading what the page cache holds without blocking;
 * - and, in tsimg_xts.c, AES-XTS on the thread pool for encrypted images.
 *
 * Every call here is synchronous (each is one short syscall, as in qemu, where the lock calls run
 * in the main loop too) and returns a number: the result when >= 0, or -errno. The JavaScript
 * side turns -errno into the errno name, so no error object is built here.
 * Plain N-API (version 1 calls only), so one build loads in any Node version.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <node_api.h>

/* Reads argument i as an int64 (JS numbers are exact to 2^53, more than any offset here). */
static int arg_i64(napi_env env, napi_value *argv, size_t argc, size_t i, int64_t *out)
{
    if (i >= argc || napi_get_value_int64(env, argv[i], out) != napi_ok) {
        napi_throw_type_error(env, NULL, "tsimg_fs: expected a number argument");
        return 0;
    }
    return 1;
}

static napi_value number(napi_env env, double v)
{
    napi_value r;
    napi_create_double(env, v, &r);
    return r;
}

#define ARGS(n)                                                      \
    size_t argc = (n);                                               \
    napi_value argv[(n) > 0 ? (n) : 1];                              \
    napi_get_cb_info(env, info, &argc, argv, NULL, NULL)

/* setlk(fd, start, len, type, ofd): fcntl F_(OFD_)SETLK; type is F_RDLCK/F_WRLCK/F_UNLCK. */
static napi_value js_setlk(napi_env env, napi_callback_info info)
{
    ARGS(5);
    int64_t fd, start, len, type, ofd;
    if (!arg_i64(env, argv, argc, 0, &fd) || !arg_i64(env, argv, argc, 1, &start) ||
        !arg_i64(env, argv, argc, 2, &len) || !arg_i64(env, argv, argc, 3, &type) ||
        !arg_i64(env, argv, argc, 4, &ofd)) {
        return NULL;
    }
    struct flock fl;
    memset(&fl, 0, sizeof fl); /* l_pid must be 0 for OFD locks */
    fl.l_whence = SEEK_SET;
    fl.l_start = start;
    fl.l_len = len;
    fl.l_type = (short)type;
    int ret;
    do {
        ret = fcntl((int)fd, ofd ? F_OFD_SETLK : F_SETLK, &fl);
    } while (ret == -1 && errno == EINTR);
    return number(env, ret == -1 ? -errno : 0);
}

/* getlk(fd, start, len, type, ofd): the l_type a conflicting lock has, F_UNLCK when none. */
static napi_value js_getlk(napi_env env, napi_callback_info info)
{
    ARGS(5);
    int64_t fd, start, len, type, ofd;
    if (!arg_i64(env, argv, argc, 0, &fd) || !arg_i64(env, argv, argc, 1, &start) ||
        !arg_i64(env, argv, argc, 2, &len) || !arg_i64(env, argv, argc, 3, &type) ||
        !arg_i64(env, argv, argc, 4, &ofd)) {
        return NULL;
    }
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_whence = SEEK_SET;
    fl.l_start = start;
    fl.l_len = len;
    fl.l_type = (short)type;
    int ret = fcntl((int)fd, ofd ? F_OFD_GETLK : F_GETLK, &fl);
    return number(env, ret == -1 ? -errno : fl.l_type);
}

/*
 * probeOfd(): 1 when the kernel has OFD locks. qemu_probe_lock_ops does exactly this: an
 * F_OFD_GETLK on /dev/null; success means OFD locks, any failure means classic POSIX locks.
 * Returns -errno when /dev/null cannot be opened (qemu then also falls back to POSIX).
 */
static napi_value js_probe_ofd(napi_env env, napi_callback_info info)
{
    (void)info;
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        return number(env, -errno);
    }
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_whence = SEEK_SET;
    fl.l_type = F_WRLCK;
    int ret = fcntl(fd, F_OFD_GETLK, &fl);
    close(fd);
    return number(env, ret == 0 ? 1 : 0);
}

/*
 * preadNoWait(fd, uint8array, offset): preadv2 with RWF_NOWAIT, reading only what the page
 * cache holds without blocking: the byte count (short or 0 when the rest is not cached, or at
 * the end of the file), or -errno (-EAGAIN: nothing cached, -EOPNOTSUPP: the file system
 * cannot tell). Lets FileDevice read cached data on the main thread, without a thread-pool
 * round trip, and still never stall the event loop on the disk. (Buffered writes with
 * RWF_NOWAIT answer EOPNOTSUPP on ext4 and tmpfs here, so there is no write twin.)
 */
static napi_value js_pread_nowait(napi_env env, napi_callback_info info)
{
    ARGS(3);
    int64_t fd, offset;
    if (!arg_i64(env, argv, argc, 0, &fd) || !arg_i64(env, argv, argc, 2, &offset)) {
        return NULL;
    }
    napi_typedarray_type type;
    size_t length;
    void *data;
    napi_value ab;
    size_t byte_offset;
    if (napi_get_typedarray_info(env, argv[1], &type, &length, &data, &ab, &byte_offset) != napi_ok ||
        type != napi_uint8_array) {
        napi_throw_type_error(env, NULL, "tsimg_fs: expected a Uint8Array");
        return NULL;
    }
#ifdef RWF_NOWAIT
    struct iovec iov = { data, length };
    ssize_t n;
    do {
        n = preadv2((int)fd, &iov, 1, (off_t)offset, RWF_NOWAIT);
    } while (n == -1 && errno == EINTR);
    return number(env, n == -1 ? -errno : (double)n);
#else
    return number(env, -EOPNOTSUPP);
#endif
}

/* fallocate(fd, mode, offset, len), retried on EINTR as qemu's do_fallocate does. */
static napi_value js_fallocate(napi_env env, napi_callback_info info)
{
    ARGS(4);
    int64_t fd, mode, offset, len;
    if (!arg_i64(env, argv, argc, 0, &fd) || !arg_i64(env, argv, argc, 1, &mode) ||
        !arg_i64(env, argv, argc, 2, &offset) || !arg_i64(env, argv, argc, 3, &len)) {
        return NULL;
    }
    int ret;
    do {
        ret = fallocate((int)fd, (int)mode, (off_t)offset, (off_t)len);
    } while (ret == -1 && errno == EINTR);
    return number(env, ret == -1 ? -errno : 0);
}

/* blkGetSize64(fd): a block device's size in bytes (ioctl BLKGETSIZE64). */
static napi_value js_blkgetsize64(napi_env env, napi_callback_info info)
{
    ARGS(1);
    int64_t fd;
    if (!arg_i64(env, argv, argc, 0, &fd)) {
        return NULL;
    }
    uint64_t size = 0;
    if (ioctl((int)fd, BLKGETSIZE64, &size) == -1) {
        return number(env, -errno);
    }
    return number(env, (double)size);
}

/* Shared by BLKDISCARD and BLKZEROOUT: both take a {start, length} pair of u64. */
static napi_value range_ioctl(napi_env env, napi_callback_info info, unsigned long request)
{
    ARGS(3);
    int64_t fd, offset, len;
    if (!arg_i64(env, argv, argc, 0, &fd) || !arg_i64(env, argv, argc, 1, &offset) ||
        !arg_i64(env, argv, argc, 2, &len)) {
        return NULL;
    }
    uint64_t range[2] = { (uint64_t)offset, (uint64_t)len };
    int ret;
    do {
        ret = ioctl((int)fd, request, range);
    } while (ret == -1 && errno == EINTR);
    return number(env, ret == -1 ? -errno : 0);
}

static napi_value js_blkdiscard(napi_env env, napi_callback_info info)
{
    return range_ioctl(env, info, BLKDISCARD);
}

static napi_value js_blkzeroout(napi_env env, napi_callback_info info)
{
    return range_ioctl(env, info, BLKZEROOUT);
}

static void set_fn(napi_env env, napi_value exports, const char *name, napi_callback cb)
{
    napi_value fn;
    napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, NULL, &fn);
    napi_set_named_property(env, exports, name, fn);
}

static void set_int(napi_env env, napi_value exports, const char *name, int v)
{
    napi_value n;
    napi_create_int32(env, v, &n);
    napi_set_named_property(env, exports, name, n);
}

void tsimg_xts_register(napi_env env, napi_value exports);

static napi_value init(napi_env env, napi_value exports)
{
    tsimg_xts_register(env, exports);
    set_fn(env, exports, "setlk", js_setlk);
    set_fn(env, exports, "getlk", js_getlk);
    set_fn(env, exports, "probeOfd", js_probe_ofd);
    set_fn(env, exports, "fallocate", js_fallocate);
    set_fn(env, exports, "blkGetSize64", js_blkgetsize64);
    set_fn(env, exports, "blkDiscard", js_blkdiscard);
    set_fn(env, exports, "blkZeroOut", js_blkzeroout);
    set_fn(env, exports, "preadNoWait", js_pread_nowait);
    /* The C constants, so the JavaScript side never hard-codes an ABI number. */
    set_int(env, exports, "F_RDLCK", F_RDLCK);
    set_int(env, exports, "F_WRLCK", F_WRLCK);
    set_int(env, exports, "F_UNLCK", F_UNLCK);
    set_int(env, exports, "FALLOC_FL_KEEP_SIZE", FALLOC_FL_KEEP_SIZE);
    set_int(env, exports, "FALLOC_FL_PUNCH_HOLE", FALLOC_FL_PUNCH_HOLE);
    set_int(env, exports, "FALLOC_FL_ZERO_RANGE", FALLOC_FL_ZERO_RANGE);
    set_int(env, exports, "ABI", 1);
    return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
