/*
 * hotswap.h: the hotswap module ABI for freestanding C (see docs/abi.md).
 *
 * A module is a WebAssembly reactor that defines its own memory and exports
 * the functions declared under "Exports" below; it may import only the host
 * functions declared under "Imports" (kv_* need the "kv" capability). Build
 * without a C library:
 *
 *   clang --target=wasm32 -O2 -nostdlib -ffreestanding \
 *       -Wl,--no-entry -Wl,--stack-first -o echo.wasm echo.c
 *
 * Add -mbulk-memory to use __builtin_memcpy/__builtin_memset: without a C
 * library they must become memory.copy/memory.fill, or the link fails on
 * an undefined memcpy. --stack-first puts the C stack at the bottom of
 * memory, so a C stack overflow traps (an access below address 0) instead
 * of overwriting data: the host bounds the WebAssembly call depth, not the
 * C stack in linear memory.
 *
 * This header holds declarations and a few inline helpers only; it needs
 * nothing but the compiler's freestanding <stdint.h>.
 */
#ifndef HOTSWAP_H
#define HOTSWAP_H

#include <stdint.h>

/* ABI version: major << 16 | minor. A host refuses another major. */
#define HOTSWAP_ABI_VERSION ((1u << 16) | 0u)

/* Status of a packed result (bits 30..31). */
#define HOTSWAP_STATUS_OK 0u
#define HOTSWAP_STATUS_ERROR 1u

/* The longest output, error text or handler list one result can describe. */
#define HOTSWAP_MAX_LENGTH ((1u << 30) - 1u)

/* Log levels; the values are log/slog's. */
#define HOTSWAP_LOG_DEBUG (-4)
#define HOTSWAP_LOG_INFO 0
#define HOTSWAP_LOG_WARN 4
#define HOTSWAP_LOG_ERROR 8

#define HOTSWAP_EXPORT(name) __attribute__((export_name(name)))
#define HOTSWAP_IMPORT(name) __attribute__((import_module("hotswap"), import_name(name)))

/*
 * hotswap_pack describes n bytes at p with a status: address in bits
 * 32..63, status in bits 30..31, length in bits 0..29. The bytes must stay
 * unchanged until the host's next call into the instance.
 */
static inline uint64_t hotswap_pack(const void *p, uint32_t n, uint32_t status) {
	if (n > HOTSWAP_MAX_LENGTH)
		__builtin_trap();
	return (uint64_t)(uintptr_t)p << 32 | (uint64_t)status << 30 | n;
}

static inline uint32_t hotswap_strlen(const char *s) {
	uint32_t n = 0;
	while (s[n])
		n++;
	return n;
}

/* Exports every module defines (types are part of the ABI). */
void _initialize(void);                       /* runs once per instance, first */
uint32_t hotswap_abi_version(void);           /* HOTSWAP_ABI_VERSION */
uint64_t hotswap_handlers(void);              /* packed: names joined by '\n' */
uint32_t hotswap_exchange(uint32_t size);     /* address of >= size bytes */
uint64_t hotswap_call(uint32_t id, uint32_t n); /* handler id, input length */
uint64_t hotswap_selftest(void);              /* packed: ok, or error text */
uint64_t hotswap_migrate(uint32_t n);         /* previous version in exchange[0:n] */
uint64_t hotswap_yield(uint32_t full);        /* bytes allocated since the last yield */

/* Imports. */
HOTSWAP_IMPORT("log")
void hotswap_log(int32_t level, const void *msg, uint32_t n);
HOTSWAP_IMPORT("kv_get") /* -1 when missing, else the value's length (copied only if <= cap) */
int64_t hotswap_kv_get(const void *key, uint32_t key_len, void *val, uint32_t cap);
HOTSWAP_IMPORT("kv_set")
void hotswap_kv_set(const void *key, uint32_t key_len, const void *val, uint32_t val_len);
HOTSWAP_IMPORT("kv_delete")
void hotswap_kv_delete(const void *key, uint32_t key_len);
HOTSWAP_IMPORT("kv_add") /* adds to the decimal integer under key; returns the sum */
int64_t hotswap_kv_add(const void *key, uint32_t key_len, int64_t delta);

#endif
