/*
 * xtsCrypt: AES-XTS over whole 512-byte sectors, on libuv's thread pool, for encrypted images
 * (LUKS in qcow2 and raw). qemu runs its cipher on its thread pool too (qcow2_co_encdec via
 * thread_pool_submit_co), so a convert decrypts on both cores; on the JavaScript thread the
 * cipher was ~0.6 s of a 1 GiB convert's 1.3 s.
 *
 * The cipher is Node's own OpenSSL (the EVP symbols the node binary exports to addons, with
 * its headers from <prefix>/include/node): per sector, the IV is reset (EVP_CipherInit_ex with
 * only the IV) and the sector processed as one XTS data unit, as qemu's do_qcrypto_block_cipher_encdec
 * does with its IV generator. Only the plain and plain64 generators are done here (the sector
 * number, 32 or 64 bits, little-endian, zero-padded); ESSIV and the other modes stay in
 * JavaScript. Without OpenSSL headers at build time the function is simply not exported.
 *
 * xtsCrypt(key, data, sector, plain32, encrypt) -> Promise<void>: `key` is the 32- or 64-byte
 * XTS key (data key, then tweak key), copied before the call returns; `data` (a Uint8Array of
 * whole sectors) is encrypted or decrypted in place and must not be touched until the promise
 * settles; `sector` is the IV sector of its first byte. Rejects with an Error on a cipher failure
 * (OpenSSL refuses an XTS key whose halves are equal, for encryption).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <node_api.h>

#if defined(__has_include)
#if __has_include(<openssl/evp.h>)
#define TSIMG_HAVE_OPENSSL 1
#endif
#endif

#ifdef TSIMG_HAVE_OPENSSL
#include <openssl/crypto.h>
#include <openssl/evp.h>

#define XTS_SECTOR 512

typedef struct {
    napi_async_work work;
    napi_deferred deferred;
    napi_ref data_ref;
    uint8_t key[64];
    size_t key_len;
    uint8_t *data;
    size_t len;
    uint64_t sector;
    int plain32;
    int encrypt;
    int failed;
} xts_job;

static void xts_execute(napi_env env, void *p)
{
    (void)env;
    xts_job *j = p;
    const EVP_CIPHER *cipher = j->key_len == 32 ? EVP_aes_128_xts() : EVP_aes_256_xts();
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL || !EVP_CipherInit_ex(ctx, cipher, NULL, j->key, NULL, j->encrypt)) {
        j->failed = 1;
    } else {
        uint64_t s = j->sector;
        for (size_t off = 0; off < j->len; off += XTS_SECTOR, s++) {
            uint8_t iv[16] = { 0 };
            uint64_t v = j->plain32 ? (uint32_t)s : s;
            for (int i = 0; i < 8; i++) {
                iv[i] = (uint8_t)(v >> (8 * i));
            }
            int outl = 0;
            if (!EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, -1) ||
                !EVP_CipherUpdate(ctx, j->data + off, &outl, j->data + off, XTS_SECTOR) || outl != XTS_SECTOR) {
                j->failed = 1;
                break;
            }
        }
    }
    EVP_CIPHER_CTX_free(ctx);
    OPENSSL_cleanse(j->key, sizeof j->key);
}

static void xts_complete(napi_env env, napi_status status, void *p)
{
    xts_job *j = p;
    if (status == napi_ok && !j->failed) {
        napi_value undef;
        napi_get_undefined(env, &undef);
        napi_resolve_deferred(env, j->deferred, undef);
    } else {
        napi_value msg, err;
        napi_create_string_utf8(env, "tsimg_fs: AES-XTS failed", NAPI_AUTO_LENGTH, &msg);
        napi_create_error(env, NULL, msg, &err);
        napi_reject_deferred(env, j->deferred, err);
    }
    napi_delete_reference(env, j->data_ref);
    napi_delete_async_work(env, j->work);
    free(j);
}

static int u8_array(napi_env env, napi_value v, uint8_t **data, size_t *len)
{
    napi_typedarray_type type;
    napi_value ab;
    size_t byte_offset;
    void *ptr;
    if (napi_get_typedarray_info(env, v, &type, len, &ptr, &ab, &byte_offset) != napi_ok || type != napi_uint8_array) {
        napi_throw_type_error(env, NULL, "tsimg_fs: expected a Uint8Array");
        return 0;
    }
    *data = ptr;
    return 1;
}

static napi_value js_xts_crypt(napi_env env, napi_callback_info info)
{
    size_t argc = 5;
    napi_value argv[5];
    napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
    uint8_t *key, *data;
    size_t key_len, len;
    int64_t sector;
    bool plain32, encrypt;
    if (argc < 5 || !u8_array(env, argv[0], &key, &key_len) || !u8_array(env, argv[1], &data, &len)) {
        if (argc < 5) napi_throw_type_error(env, NULL, "tsimg_fs: xtsCrypt takes 5 arguments");
        return NULL;
    }
    if ((key_len != 32 && key_len != 64) || len % XTS_SECTOR != 0 ||
        napi_get_value_int64(env, argv[2], &sector) != napi_ok || sector < 0 ||
        napi_get_value_bool(env, argv[3], &plain32) != napi_ok || napi_get_value_bool(env, argv[4], &encrypt) != napi_ok) {
        napi_throw_type_error(env, NULL, "tsimg_fs: xtsCrypt(key 32|64 bytes, whole sectors, sector >= 0, bool, bool)");
        return NULL;
    }
    xts_job *j = calloc(1, sizeof *j);
    if (j == NULL) {
        napi_throw_error(env, NULL, "tsimg_fs: out of memory");
        return NULL;
    }
    memcpy(j->key, key, key_len);
    j->key_len = key_len;
    j->data = data;
    j->len = len;
    j->sector = (uint64_t)sector;
    j->plain32 = plain32;
    j->encrypt = encrypt;
    napi_value promise, name;
    napi_create_promise(env, &j->deferred, &promise);
    /* The reference keeps `data`'s buffer alive while the pool works on it. */
    napi_create_reference(env, argv[1], 1, &j->data_ref);
    napi_create_string_utf8(env, "tsimg_xts", NAPI_AUTO_LENGTH, &name);
    napi_create_async_work(env, NULL, name, xts_execute, xts_complete, j, &j->work);
    napi_queue_async_work(env, j->work);
    return promise;
}
#endif

void tsimg_xts_register(napi_env env, napi_value exports)
{
#ifdef TSIMG_HAVE_OPENSSL
    napi_value fn;
    napi_create_function(env, "xtsCrypt", NAPI_AUTO_LENGTH, js_xts_crypt, NULL, &fn);
    napi_set_named_property(env, exports, "xtsCrypt", fn);
#else
    (void)env;
    (void)exports;
#endif
}
