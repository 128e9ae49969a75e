package httpapi

import (
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

// TestSpecDocumentsErrorCodes checks every public error code the server can
// send is listed in the spec's Error schema.
func TestSpecDocumentsErrorCodes(t *testing.T) {
	for _, code := range errdefs.Codes {
		if !strings.Contains(string(api.Spec), "- "+code+"\n") {
			t.Errorf("error code %q is not listed in api/openapi.yaml", code)
		}
	}
}
