package edge

import (
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

// e2bHost is the URL E2B's getHost(port) makes: {port}-{sandbox}.{domain}.
func (h *harness) e2bHost(port int, path string) string {
	return "http://" + strconv.Itoa(port) + "-" + strings.TrimPrefix(lineage, lineagePrefix) + "." + h.domain + path
}

// TestE2BHosts: with the E2B layer on, api.{domain} is E2B's control
// plane and the host 49983-{sandbox} its envd (the SDKs' and their signed
// file URLs' with E2B_DOMAIN alone); without it, the agent's port stays
// refused.
func TestE2BHosts(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echoPath), Config{})
	wantError(t, h.get(t, h.e2bHost(AgentPort, "/files?path=x")), 400, errdefs.CodePortNotAllowed)

	h.edge.ServeE2B(E2B{API: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "e2b "+r.Host+" "+r.URL.RequestURI())
	})})
	resp := h.get(t, h.e2bHost(AgentPort, "/files?path=x"))
	b, _ := io.ReadAll(resp.Body)
	if want := "e2b 49983-" + strings.TrimPrefix(lineage, lineagePrefix) + "." + h.domain + " /files?path=x"; resp.StatusCode != 200 || string(b) != want {
		t.Fatalf("envd host: %d %q, want 200 %q", resp.StatusCode, b, want)
	}
	// E2B's control plane is api.{domain}, where the SDKs go with
	// E2B_DOMAIN alone.
	resp = h.get(t, "http://api."+h.domain+"/v2/sandboxes")
	if b, _ := io.ReadAll(resp.Body); resp.StatusCode != 200 || string(b) != "e2b api."+h.domain+" /v2/sandboxes" {
		t.Fatalf("api host: %d %q", resp.StatusCode, b)
	}
	// A signed label of the agent's port is never envd's, nor forwarded.
	l := label{Port: AgentPort, LineageID: lineage}
	l.Sig = h.edge.keys.sign(l)
	wantError(t, h.get(t, "http://"+l.String()+"."+h.domain+"/"), 400, errdefs.CodePortNotAllowed)
}

// TestE2BNotFound: with the E2B layer on, getHost's URL of an E2B
// sandbox that was killed answers 502 with E2B's body, our code riding
// along; a signed URL of it, a Nullspace machine's URL and a lineage the
// server does not know keep Nullspace's answers.
func TestE2BNotFound(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echoPath), Config{})
	h.edge.ServeE2B(E2B{API: http.NotFoundHandler()})
	killed := Target{LineageID: lineage, MachineID: lineage, State: api.StateKilled, PublicPorts: true, E2B: true}
	h.machines.set(killed)
	resp := h.get(t, h.e2bHost(h.port, "/"))
	var body struct {
		Code      int    `json:"code"`
		Message   string `json:"message"`
		SandboxID string `json:"sandboxId"`
		ErrorCode string `json:"error_code"`
	}
	json.NewDecoder(resp.Body).Decode(&body)
	if resp.StatusCode != 502 || body.Code != 502 || body.Message != "The sandbox was not found" ||
		body.ErrorCode != errdefs.CodeMachineNotFound || body.SandboxID != strings.TrimPrefix(lineage, lineagePrefix) {
		t.Errorf("a killed E2B sandbox: %d %+v, want 502 and E2B's body", resp.StatusCode, body)
	}
	wantError(t, h.get(t, h.url(t).URL+"/"), 404, errdefs.CodeMachineNotFound)
	wantError(t, h.get(t, "http://"+strconv.Itoa(h.port)+"-ffffffffffffffffffff."+h.domain+"/"), 401, errdefs.CodeSignatureMissing)
	killed.E2B = false
	h.machines.set(killed)
	wantError(t, h.get(t, h.e2bHost(h.port, "/")), 404, errdefs.CodeMachineNotFound)
}

// TestE2BTrafficToken: a private sandbox's unsigned URL opens to its
// traffic access token (and to nothing else), which is not forwarded.
func TestE2BTrafficToken(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "token header: "+r.Header.Get(TrafficTokenHeader))
	}), Config{})
	h.edge.ServeE2B(E2B{API: http.NotFoundHandler(), TrafficToken: func(id string) string { return "tok-" + id }})
	private := Target{LineageID: lineage, MachineID: lineage, ContainerID: "ns0", State: api.StateRunning,
		IP: netip.MustParseAddr("127.0.0.1"), PublicPorts: false, E2B: true}
	h.machines.set(private)
	get := func(token string) *http.Response {
		req, _ := http.NewRequest(http.MethodGet, h.e2bHost(h.port, "/"), nil)
		if token != "" {
			req.Header.Set("e2b-traffic-access-token", token)
		}
		return h.do(t, req)
	}
	wantError(t, get(""), 403, errdefs.CodeTrafficTokenInvalid)
	wantError(t, get("tok-mch_ffffffffffffffffffff"), 403, errdefs.CodeTrafficTokenInvalid)
	resp := get("tok-" + lineage)
	if b, _ := io.ReadAll(resp.Body); resp.StatusCode != 200 || string(b) != "token header: " {
		t.Fatalf("with the token: %d %q, want 200 and no token forwarded", resp.StatusCode, b)
	}
	// A signed URL needs no token.
	if resp := h.get(t, h.url(t).URL+"/"); resp.StatusCode != 200 {
		t.Fatalf("signed URL of a private sandbox: %d", resp.StatusCode)
	}
	// A private machine of the Nullspace API: no token opens it, and an
	// unsigned URL is refused as ever.
	private.E2B = false
	h.machines.set(private)
	wantError(t, get("tok-"+lineage), 401, errdefs.CodeSignatureMissing)
}
