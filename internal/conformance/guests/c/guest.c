/*
 * guest.c: the conformance guest in freestanding C. It answers the same
 * handlers as the Go and Rust conformance guests (see package conformance).
 */
#include "hotswap.h"

static const char names[] = "echo\nfail\ntrap\nloop\nspin\nrecurse\ngrow\ncount\nput\nget\ndel\nlog";
enum { ECHO, FAIL, TRAP, LOOP, SPIN, RECURSE, GROW, COUNT, PUT, GET, DEL, LOG };

/* The exchange buffer; a larger one comes from fresh pages. */
static uint8_t initial[16 << 10];
static uint8_t *exchange = initial;
static uint32_t exchange_cap = sizeof initial;

/* out holds a handler's output until the next call. */
static uint8_t out[4 << 10];

__attribute__((import_module("wasi_snapshot_preview1"), import_name("fd_write")))
int32_t fd_write(int32_t fd, const void *iovs, int32_t n, uint32_t *written);

static void *grow_pages(uint32_t pages) {
	int32_t old = __builtin_wasm_memory_grow(0, pages);
	if (old < 0)
		__builtin_trap(); /* the host reports the memory limit */
	return (void *)((uintptr_t)old << 16);
}

static uint32_t append(uint32_t at, const void *p, uint32_t n) {
	if (at + n > sizeof out)
		n = sizeof out - at;
	__builtin_memcpy(out + at, p, n);
	return at + n;
}

static uint64_t ok(uint32_t n) { return hotswap_pack(out, n, HOTSWAP_STATUS_OK); }

static uint64_t fail(const char *prefix, const void *p, uint32_t n) {
	uint32_t k = append(0, prefix, hotswap_strlen(prefix));
	return hotswap_pack(out, append(k, p, n), HOTSWAP_STATUS_ERROR);
}

static uint32_t utoa(uint64_t v, uint8_t *dst) {
	uint8_t tmp[20];
	uint32_t n = 0;
	do {
		tmp[n++] = '0' + v % 10;
		v /= 10;
	} while (v);
	for (uint32_t i = 0; i < n; i++)
		dst[i] = tmp[n - 1 - i];
	return n;
}

static int atou(const uint8_t *p, uint32_t n, uint64_t *v) {
	*v = 0;
	if (n == 0)
		return 0;
	for (uint32_t i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return 0;
		*v = *v * 10 + (p[i] - '0');
	}
	return 1;
}

/* spin recurses twice per level and never loops: it runs about forever
 * with a stack only depth deep. The volatile store after the calls keeps
 * the compiler from turning the recursion into a loop. */
static volatile uint32_t spins;
__attribute__((noinline)) static uint64_t spin(uint32_t depth) {
	if (depth == 0)
		return 1;
	uint64_t a = spin(depth - 1), b = spin(depth - 1);
	spins++;
	return a * 31 ^ b;
}

/* recurse recurses n deep, its frame in WebAssembly locals only, and
 * answers n. The volatile store after the call keeps the compiler from
 * turning the recursion into a loop. */
__attribute__((noinline)) static uint64_t recurse(uint64_t n) {
	if (n == 0)
		return 0;
	uint64_t depth = recurse(n - 1) + 1;
	spins++;
	return depth;
}

HOTSWAP_EXPORT("_initialize") void _initialize(void) {}

HOTSWAP_EXPORT("hotswap_abi_version") uint32_t hotswap_abi_version(void) { return HOTSWAP_ABI_VERSION; }

HOTSWAP_EXPORT("hotswap_handlers") uint64_t hotswap_handlers(void) {
	return hotswap_pack(names, sizeof names - 1, HOTSWAP_STATUS_OK);
}

HOTSWAP_EXPORT("hotswap_exchange") uint32_t hotswap_exchange(uint32_t size) {
	if (size > exchange_cap) {
		uint32_t pages = (size + 0xffff) >> 16;
		exchange = grow_pages(pages);
		exchange_cap = pages << 16;
	}
	return (uint32_t)(uintptr_t)exchange;
}

static uint32_t split(const uint8_t *p, uint32_t n) {
	for (uint32_t i = 0; i < n; i++)
		if (p[i] == '=')
			return i;
	return n;
}

HOTSWAP_EXPORT("hotswap_call") uint64_t hotswap_call(uint32_t id, uint32_t n) {
	const uint8_t *in = exchange;
	uint64_t v;
	switch (id) {
	case ECHO:
		return hotswap_pack(in, n, HOTSWAP_STATUS_OK);
	case FAIL:
		return fail("refused: ", in, n);
	case TRAP: {
		uint32_t k = append(0, "panic: trapped: ", 16);
		k = append(k, in, n);
		k = append(k, "\n", 1);
		struct { const void *p; uint32_t n; } iov = {out, k};
		uint32_t written;
		fd_write(2, &iov, 1, &written);
		__builtin_trap();
	}
	case LOOP:
		for (;;)
			spins++;
	case SPIN:
		return ok(utoa(spin(64), out));
	case RECURSE:
		if (!atou(in, n, &v))
			return fail("not a number: ", in, n);
		return ok(utoa(recurse(v), out));
	case GROW:
		for (;;)
			*(volatile uint8_t *)grow_pages(16) = 1;
	case COUNT:
		return ok(utoa((uint64_t)hotswap_kv_add("count", 5, 1), out));
	case PUT: {
		uint32_t eq = split(in, n);
		if (eq == n)
			return fail("want key=value: ", in, n);
		hotswap_kv_set(in, eq, in + eq + 1, n - eq - 1);
		return ok(0);
	}
	case GET: {
		int64_t len = hotswap_kv_get(in, n, out, sizeof out);
		if (len < 0)
			return fail("missing: ", in, n);
		if (len > (int64_t)sizeof out) {
			uint8_t *big = grow_pages((uint32_t)((len + 0xffff) >> 16));
			len = hotswap_kv_get(in, n, big, (uint32_t)len);
			return hotswap_pack(big, (uint32_t)len, HOTSWAP_STATUS_OK);
		}
		return ok((uint32_t)len);
	}
	case DEL:
		hotswap_kv_delete(in, n);
		return ok(0);
	case LOG:
		hotswap_log(HOTSWAP_LOG_INFO, in, n);
		return ok(0);
	}
	return fail("unknown handler", 0, 0);
}

/* The self-test fails while the host-kept key "selftest" holds "fail". */
HOTSWAP_EXPORT("hotswap_selftest") uint64_t hotswap_selftest(void) {
	uint8_t v[4];
	if (hotswap_kv_get("selftest", 8, v, sizeof v) == 4 && v[0] == 'f' && v[1] == 'a' && v[2] == 'i' && v[3] == 'l')
		return fail("self-test: answers are wrong", 0, 0);
	return ok(0);
}

/* migrate records the version it replaces under "migrated". */
HOTSWAP_EXPORT("hotswap_migrate") uint64_t hotswap_migrate(uint32_t n) {
	hotswap_kv_set("migrated", 8, exchange, n);
	return ok(0);
}

HOTSWAP_EXPORT("hotswap_yield") uint64_t hotswap_yield(uint32_t full) {
	(void)full;
	return 0;
}
