package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// runCLI runs the CLI in-process and returns its output and exit code.
func runCLI(t *testing.T, args ...string) (stdout string, code int, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err = run(context.Background(), args, &out, &errOut)
	if err != nil {
		code = exitCode(err)
	}
	return out.String(), code, err
}

var keyIDRe = regexp.MustCompile(`key id:\s+([0-9a-f]{16})`)

// setupSigned makes a key pair trusted in trust/ and a signed pricing.wasm,
// and returns the paths.
func setupSigned(t *testing.T) (dir, keyPath, trust, wasm string) {
	t.Helper()
	dir = t.TempDir()
	trust = filepath.Join(dir, "trust")
	out, code, err := runCLI(t, "keygen", "--out", filepath.Join(dir, "keys"), "--trust", trust)
	if code != 0 {
		t.Fatalf("keygen = %v (exit %d); want exit 0", err, code)
	}
	m := keyIDRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("keygen output %q has no key id", out)
	}
	keyPath = filepath.Join(dir, "keys", m[1]+".key")
	wasm = filepath.Join(dir, "pricing.wasm")
	if err := os.WriteFile(wasm, []byte("\x00asm\x01\x00\x00\x00pricing"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code, err := runCLI(t, "sign", "--key", keyPath, "--version", "1.4.2", "--abi", "1", wasm); code != 0 {
		t.Fatalf("sign = %v (exit %d); want exit 0\n%s", err, code, out)
	}
	return dir, keyPath, trust, wasm
}

func TestKeygen(t *testing.T) {
	dir := t.TempDir()
	out, code, err := runCLI(t, "keygen", "--out", dir)
	if code != 0 {
		t.Fatalf("keygen = %v (exit %d); want exit 0", err, code)
	}
	m := keyIDRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("keygen output = %q; want a key id", out)
	}
	for name, perm := range map[string]os.FileMode{m[1] + ".key": 0o600, m[1] + ".pub": 0o644} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("keygen wrote no %s: %v", name, err)
		}
		if fi.Mode().Perm() != perm {
			t.Errorf("mode of %s = %04o; want %04o", name, fi.Mode().Perm(), perm)
		}
	}
}

func TestSignVerify(t *testing.T) {
	_, _, trust, wasm := setupSigned(t)
	out, code, err := runCLI(t, "verify", "--trust", trust, "--name", "pricing", "--kind", "wasm", "--abi", "1", wasm)
	if code != 0 {
		t.Fatalf("verify = %v (exit %d); want exit 0", err, code)
	}
	for _, want := range []string{"verified", "pricing 1.4.2", "wasm", "sha256:", "trust=enforce"} {
		if !strings.Contains(out, want) {
			t.Errorf("verify output = %q; want it to contain %q", out, want)
		}
	}
	data, err := os.ReadFile(wasm + ".manifest")
	if err != nil {
		t.Fatalf("sign wrote no manifest beside the artifact: %v", err)
	}
	if !bytes.Contains(data, []byte(`"signature": "`)) || !bytes.Contains(data, []byte(`"abi": "1"`)) {
		t.Errorf("manifest = %s; want a signature and abi 1", data)
	}
}

func TestVerifyRefuses(t *testing.T) {
	tests := []struct {
		name    string
		change  func(t *testing.T, dir, trust, wasm string) []string // returns extra verify args
		wantMsg string
	}{
		{"tampered payload", func(t *testing.T, dir, trust, wasm string) []string {
			os.WriteFile(wasm, []byte("\x00asm\x01\x00\x00\x00PRICING"), 0o644)
			return nil
		}, "digest check failed"},
		{"tampered manifest", func(t *testing.T, dir, trust, wasm string) []string {
			data, _ := os.ReadFile(wasm + ".manifest")
			os.WriteFile(wasm+".manifest", bytes.Replace(data, []byte("1.4.2"), []byte("1.4.3"), 1), 0o644)
			return nil
		}, "signature check failed"},
		{"unknown key", func(t *testing.T, dir, trust, wasm string) []string {
			other := filepath.Join(dir, "other-trust")
			if _, code, err := runCLI(t, "keygen", "--out", filepath.Join(dir, "other"), "--trust", other); code != 0 {
				t.Fatal(err)
			}
			return []string{"--trust", other}
		}, "key check failed"},
		{"no manifest", func(t *testing.T, dir, trust, wasm string) []string {
			os.Remove(wasm + ".manifest")
			return nil
		}, "policy check failed"},
		{"malformed manifest", func(t *testing.T, dir, trust, wasm string) []string {
			os.WriteFile(wasm+".manifest", []byte("not json"), 0o644)
			return nil
		}, "manifest check failed"},
		{"oversized manifest", func(t *testing.T, dir, trust, wasm string) []string {
			os.WriteFile(wasm+".manifest", bytes.Repeat([]byte(" "), 1<<20), 0o644)
			return nil
		}, "manifest too large"},
		{"kind mismatch", func(t *testing.T, dir, trust, wasm string) []string {
			return []string{"--kind", "binary"}
		}, "kind check failed"},
		{"missing trust directory", func(t *testing.T, dir, trust, wasm string) []string {
			return []string{"--trust", filepath.Join(dir, "nope")}
		}, "load trust store"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, _, trust, wasm := setupSigned(t)
			args := append([]string{"verify", "--trust", trust}, tt.change(t, dir, trust, wasm)...)
			out, code, err := runCLI(t, append(args, wasm)...)
			if code != 1 {
				t.Fatalf("verify = %v (exit %d), output %q; want exit 1", err, code, out)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("verify error = %q; want it to contain %q", err, tt.wantMsg)
			}
			if strings.Contains(out, "verified") {
				t.Errorf("verify output = %q on a refusal", out)
			}
		})
	}
}

func TestTrustUsageErrors(t *testing.T) {
	dir, keyPath, trust, wasm := setupSigned(t)
	tests := []struct {
		name string
		args []string
	}{
		{"keygen with an argument", []string{"keygen", "--out", dir, "extra"}},
		{"sign without --key", []string{"sign", wasm}},
		{"sign without artifact", []string{"sign", "--key", keyPath}},
		{"sign with a bad kind", []string{"sign", "--key", keyPath, "--kind", "jar", wasm}},
		{"sign with an unknown flag", []string{"sign", "--key", keyPath, "--nope", wasm}},
		{"verify without artifact", []string{"verify", "--trust", trust}},
		{"verify with two artifacts", []string{"verify", "--trust", trust, wasm, wasm}},
		{"verify with a bad kind", []string{"verify", "--trust", trust, "--kind", "jar", wasm}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, code, err := runCLI(t, tt.args...); code != 2 {
				t.Errorf("run(%q) = %v (exit %d); want exit 2", tt.args, err, code)
			}
		})
	}
}

func TestSignRefusesReadablePrivateKey(t *testing.T) {
	_, keyPath, _, wasm := setupSigned(t)
	os.Chmod(keyPath, 0o644)
	_, code, err := runCLI(t, "sign", "--key", keyPath, wasm)
	if code != 1 || err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("sign(key mode 0644) = %v (exit %d); want exit 1 telling to chmod 600", err, code)
	}
}

func TestTrustDefaultStateDir(t *testing.T) {
	state := t.TempDir()
	t.Setenv(stateDirEnv, state)
	out, code, err := runCLI(t, "keygen", "--trust", filepath.Join(state, "trust"))
	if code != 0 {
		t.Fatalf("keygen = %v (exit %d)", err, code)
	}
	id := keyIDRe.FindStringSubmatch(out)[1]
	if _, err := os.Stat(filepath.Join(state, "keys", id+".key")); err != nil {
		t.Errorf("keygen did not write to keys/ of $%s: %v", stateDirEnv, err)
	}
	bin := filepath.Join(t.TempDir(), "server")
	os.WriteFile(bin, []byte("\x7fELF"), 0o755)
	// --key by id, verify with the default trust directory.
	if _, code, err := runCLI(t, "sign", "--key", id, bin); code != 0 {
		t.Fatalf("sign --key %s = %v (exit %d); want exit 0", id, err, code)
	}
	out, code, err = runCLI(t, "verify", "--kind", "binary", bin)
	if code != 0 || !strings.Contains(out, "server") {
		t.Errorf("verify = %q, %v (exit %d); want exit 0 naming server", out, err, code)
	}
}
