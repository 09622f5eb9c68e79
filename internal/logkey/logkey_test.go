package logkey_test

import (
	"go/ast"
	"go/constant"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// unscanned names the directories (from the repository root) whose
// logging the test does not check, and why.
var unscanned = map[string]string{
	"examples": "code a user copies imports nothing from internal/; it spells the same keys",
}

// synonyms are literal keys that name a concept logkey has a key for.
var synonyms = map[string]string{
	"error": "Err", "mod": "Module", "module_name": "Module", "ver": "Version", "sha256": "Digest",
	"gen": "Generation", "file": "Path", "dir": "Path", "socket": "Path",
}

// logMethods are the methods of *slog.Logger (and the functions of
// package slog) that take key/value pairs, with the number of arguments
// before the first pair.
var logMethods = map[string]int{
	"Debug": 1, "Info": 1, "Warn": 1, "Error": 1,
	"DebugContext": 2, "InfoContext": 2, "WarnContext": 2, "ErrorContext": 2,
	"Log": 3, "With": 0,
}

// attrFuncs are package slog's Attr constructors: the key comes first.
var attrFuncs = map[string]bool{
	"String": true, "Int": true, "Int64": true, "Uint64": true, "Float64": true, "Bool": true,
	"Time": true, "Duration": true, "Any": true, "Group": true,
}

// TestLogCallsUseLogkey scans every non-test Go file of the repository
// and fails on a slog call whose key is a string literal where logkey has
// a constant for it (the value itself, or a synonym such as "error").
func TestLogCallsUseLogkey(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root %s: %v", root, err)
	}
	keys := logkeyValues(t, root) // value -> constant name
	for k, name := range synonyms {
		keys[k] = name
	}
	fset := token.NewFileSet()
	var files, calls int
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			name := d.Name()
			if rel != "." && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata" || name == "vendor") {
				return filepath.SkipDir
			}
			if _, skip := unscanned[filepath.ToSlash(rel)]; skip {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		files++
		slogName := importName(f, "log/slog")
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			var keyArgs []ast.Expr
			switch {
			case slogName != "" && isIdent(sel.X, slogName) && attrFuncs[sel.Sel.Name] && len(call.Args) > 0:
				keyArgs = call.Args[:1]
			case isLogger(sel.X, slogName) && hasKey(logMethods, sel.Sel.Name) && len(call.Args) > logMethods[sel.Sel.Name]:
				calls++
				keyArgs = pairKeys(call.Args[logMethods[sel.Sel.Name]:], slogName)
			}
			for _, k := range keyArgs {
				if s, ok := stringLit(k); ok {
					if name, ok := keys[s]; ok {
						t.Errorf("%s: log key %q: use logkey.%s", fset.Position(k.Pos()), s, name)
					}
				}
			}
			return true
		})
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.CompositeLit)
			if !ok {
				return true
			}
			// []any{"key", value, ...}: arguments gathered for a log call.
			if at, ok := lit.Type.(*ast.ArrayType); ok && isAny(at.Elt) && len(lit.Elts) > 1 {
				if _, ok := stringLit(lit.Elts[0]); ok {
					for _, k := range pairKeys(lit.Elts, slogName) {
						if s, ok := stringLit(k); ok {
							if name, ok := keys[s]; ok {
								t.Errorf("%s: log key %q: use logkey.%s", fset.Position(k.Pos()), s, name)
							}
						}
					}
				}
				return true
			}
			if slogName == "" {
				return true
			}
			if se, ok := lit.Type.(*ast.SelectorExpr); !ok || !isIdent(se.X, slogName) || se.Sel.Name != "Attr" {
				return true
			}
			for _, e := range lit.Elts {
				if kv, ok := e.(*ast.KeyValueExpr); ok && isIdent(kv.Key, "Key") {
					if s, ok := stringLit(kv.Value); ok {
						if name, ok := keys[s]; ok {
							t.Errorf("%s: slog.Attr key %q: use logkey.%s", fset.Position(kv.Value.Pos()), s, name)
						}
					}
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The scan must have seen the code it guards.
	if files < 100 || calls < 50 {
		t.Fatalf("scanned %d files and %d log calls; want the whole repository", files, calls)
	}
}

// logkeyValues reads the constants of logkey.go.
func logkeyValues(t *testing.T, root string) map[string]string {
	f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(root, "internal/logkey/logkey.go"), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			for i, name := range vs.Names {
				if s, ok := stringLit(vs.Values[i]); ok {
					out[s] = name.Name
				}
			}
		}
	}
	if len(out) < 11 {
		t.Fatalf("read %d keys from logkey.go; want at least 11", len(out))
	}
	return out
}

// pairKeys returns the key positions of slog's key/value arguments: a
// call of a slog Attr constructor (or an slog.Attr literal) takes one
// argument, anything else is a key followed by its value.
func pairKeys(args []ast.Expr, slogName string) []ast.Expr {
	var keys []ast.Expr
	for i := 0; i < len(args); i++ {
		if isAttr(args[i], slogName) {
			continue
		}
		keys = append(keys, args[i])
		i++ // the value
	}
	return keys
}

func isAttr(e ast.Expr, slogName string) bool {
	switch e := e.(type) {
	case *ast.CallExpr:
		sel, ok := e.Fun.(*ast.SelectorExpr)
		return ok && slogName != "" && isIdent(sel.X, slogName) && attrFuncs[sel.Sel.Name]
	case *ast.CompositeLit:
		sel, ok := e.Type.(*ast.SelectorExpr)
		return ok && slogName != "" && isIdent(sel.X, slogName) && sel.Sel.Name == "Attr"
	}
	return false
}

// isLogger reports whether e looks like a *slog.Logger: the package slog
// itself, or a name or field whose name says log ("log", "logger",
// "u.log", "opts.Logger").
func isLogger(e ast.Expr, slogName string) bool {
	var name string
	switch e := e.(type) {
	case *ast.Ident:
		name = e.Name
		if slogName != "" && name == slogName {
			return true
		}
	case *ast.SelectorExpr:
		name = e.Sel.Name
	case *ast.CallExpr: // h.Logger(), slog.Default()
		if sel, ok := e.Fun.(*ast.SelectorExpr); ok {
			name = sel.Sel.Name
			if slogName != "" && isIdent(sel.X, slogName) && name == "Default" {
				return true
			}
		}
	}
	name = strings.ToLower(name)
	return name == "log" || name == "logger" || strings.HasSuffix(name, "log") || strings.HasSuffix(name, "logger")
}

func isAny(e ast.Expr) bool {
	if isIdent(e, "any") {
		return true
	}
	it, ok := e.(*ast.InterfaceType)
	return ok && len(it.Methods.List) == 0
}

func hasKey(m map[string]int, k string) bool { _, ok := m[k]; return ok }

func isIdent(e ast.Expr, name string) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == name
}

// stringLit returns the value of a string literal.
func stringLit(e ast.Expr) (string, bool) {
	lit, ok := e.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return "", false
	}
	v := constant.MakeFromLiteral(lit.Value, lit.Kind, 0)
	if v.Kind() != constant.String {
		return "", false
	}
	s, err := strconv.Unquote(lit.Value)
	return s, err == nil
}

// importName returns the name path is imported under in f, or "".
func importName(f *ast.File, path string) string {
	for _, imp := range f.Imports {
		if p, _ := strconv.Unquote(imp.Path.Value); p == path {
			if imp.Name != nil {
				return imp.Name.Name
			}
			return filepath.Base(path)
		}
	}
	return ""
}
