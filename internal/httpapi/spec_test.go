package httpapi

import (
	"slices"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

// TestSpecMatchesRoutes fails when the routes the server registers and the
// operations api/openapi.yaml documents drift apart, in either direction.
func TestSpecMatchesRoutes(t *testing.T) {
	var spec struct {
		Paths map[string]map[string]yaml.Node `yaml:"paths"`
	}
	if err := yaml.Unmarshal(api.Spec, &spec); err != nil {
		t.Fatalf("parse api/openapi.yaml: %v", err)
	}
	methods := map[string]bool{"get": true, "put": true, "post": true, "delete": true, "patch": true, "head": true, "options": true}
	inSpec := map[string]bool{}
	for path, ops := range spec.Paths {
		for m := range ops {
			if methods[m] {
				inSpec[strings.ToUpper(m)+" "+path] = true
			}
		}
	}
	inCode := map[string]bool{}
	for _, r := range (&Server{}).Routes() {
		inCode[r.Method+" "+r.Path] = true
	}
	var missing, extra []string
	for k := range inCode {
		if !inSpec[k] {
			missing = append(missing, k)
		}
	}
	for k := range inSpec {
		if !inCode[k] {
			extra = append(extra, k)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing) > 0 {
		t.Errorf("routes served but not in api/openapi.yaml:\n  %s", strings.Join(missing, "\n  "))
	}
	if len(extra) > 0 {
		t.Errorf("operations in api/openapi.yaml that no route serves:\n  %s", strings.Join(extra, "\n  "))
	}
	if len(inCode) == 0 {
		t.Fatal("no routes registered")
	}
}

// TestSpecScopes: the scope each route checks is the one its operation's
// security lists (public routes list none), so the document tells callers
// exactly which key they need.
func TestSpecScopes(t *testing.T) {
	var spec struct {
		Paths map[string]map[string]yaml.Node `yaml:"paths"`
	}
	if err := yaml.Unmarshal(api.Spec, &spec); err != nil {
		t.Fatalf("parse api/openapi.yaml: %v", err)
	}
	for _, r := range (&Server{}).Routes() {
		node, ok := spec.Paths[r.Path][strings.ToLower(r.Method)]
		if !ok {
			continue // TestSpecMatchesRoutes reports it
		}
		name := r.Method + " " + r.Path
		var op struct {
			Security *[]map[string][]string `yaml:"security"`
		}
		if err := node.Decode(&op); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		switch {
		case op.Security == nil:
			t.Errorf("%s: no security in api/openapi.yaml; list the scope it needs", name)
		case r.Public:
			if len(*op.Security) != 0 {
				t.Errorf("%s is public but api/openapi.yaml lists security %v", name, *op.Security)
			}
		case len(*op.Security) != 1:
			t.Errorf("%s: security %v, want [{bearerAuth: [%s]}]", name, *op.Security, r.Scope)
		default:
			got := (*op.Security)[0]["bearerAuth"]
			want := []string{}
			if r.Scope != "" {
				want = []string{r.Scope}
			}
			if !slices.Equal(got, want) {
				t.Errorf("%s: api/openapi.yaml lists scopes %v, the route checks %v", name, got, want)
			}
		}
	}
}

// TestSpecDocumentsErrorCodes checks every public error code the server can
// send is listed in the spec's Error schema.
func TestSpecDocumentsErrorCodes(t *testing.T) {
	for _, code := range errdefs.Codes {
		if !strings.Contains(string(api.Spec), "- "+code+"\n") {
			t.Errorf("error code %q is not listed in api/openapi.yaml", code)
		}
	}
}

// TestSpecRefsResolve: every local $ref of api/openapi.yaml names
// something the document has (the TypeScript SDK's generator refuses a
// document that does not).
func TestSpecRefsResolve(t *testing.T) {
	var doc any
	if err := yaml.Unmarshal(api.Spec, &doc); err != nil {
		t.Fatalf("parse api/openapi.yaml: %v", err)
	}
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if ref, ok := x.(string); ok && k == "$ref" && strings.HasPrefix(ref, "#/") {
					var at any = doc
					for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
						m, _ := at.(map[string]any)
						at = m[strings.ReplaceAll(strings.ReplaceAll(part, "~1", "/"), "~0", "~")]
					}
					if at == nil {
						t.Errorf("$ref %s names nothing in api/openapi.yaml", ref)
					}
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(doc)
}
