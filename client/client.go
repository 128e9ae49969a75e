// Package client is the Go client of the Nullspace HTTP API (docs/http-api.md).
//
// It is used by the nullspace CLI, by the project's tests and by Go programs
// that drive Nullspace machines:
//
//	c, err := client.FromEnv()
//	if err != nil { ... }
//	m, err := c.CreateMachine(ctx, api.CreateMachineRequest{Template: "base"})
//	res, err := c.RunCommand(ctx, m.ID, api.RunCommandRequest{Shell: "uname -a"})
//
// Every method takes a context first and returns a *APIError for non-2xx
// responses; match codes with IsCode. The client never retries.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"nullspace.dev/nullspace/api"
)

// Environment variables read by FromEnv, and their defaults.
const (
	EnvAPIURL  = "NULLSPACE_API_URL"  // base URL of the API server
	EnvAPIKey  = "NULLSPACE_API_KEY"  // API key sent as a bearer token
	EnvDataDir = "NULLSPACE_DATA_DIR" // server data dir holding the api-key file

	DefaultAPIURL  = "http://127.0.0.1:7700"
	DefaultDataDir = "/var/lib/nullspace"
	// KeyFileName is the file in the data dir where the server writes its
	// API key on first start.
	KeyFileName = "api-key"
)

// Client talks to one Nullspace API server. It is safe for concurrent use.
type Client struct {
	baseURL   string // without trailing slash
	apiKey    string
	http      *http.Client
	userAgent string
	// fileUser is who file calls act as (AsUser); "" is the server's
	// default, root, as for commands.
	fileUser string
}

// AsUser returns a copy of c whose file calls (ReadFile, WriteFile,
// ListFiles, Stat, Remove, Mkdir, Rename, WatchDir) act as user, a name or
// uid of the machine: with that user's permissions, creating files it
// owns, and never following a symlink further than that user could go.
// "" is the default, root.
func (c *Client) AsUser(user string) *Client {
	cp := *c
	cp.fileUser = user
	return &cp
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient makes the client send requests with hc instead of a plain
// &http.Client{}. Streams and template builds can last long: do not set
// hc.Timeout, use contexts instead.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) { c.http = hc }
}

// WithUserAgent sets the User-Agent header of every request.
func WithUserAgent(ua string) Option {
	return func(c *Client) { c.userAgent = ua }
}

// New returns a client for the server at baseURL (e.g. "http://127.0.0.1:7700")
// that authenticates with apiKey. An empty apiKey sends no Authorization header.
func New(baseURL, apiKey string, opts ...Option) *Client {
	c := &Client{
		baseURL:   strings.TrimRight(baseURL, "/"),
		apiKey:    apiKey,
		http:      &http.Client{},
		userAgent: "nullspace-go-client",
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

// BaseURL returns the server URL the client sends requests to.
func (c *Client) BaseURL() string { return c.baseURL }

// FromEnv returns a client configured from the environment: the URL from
// NULLSPACE_API_URL (default http://127.0.0.1:7700) and the key as resolved by
// KeyFromEnv.
func FromEnv(opts ...Option) (*Client, error) {
	key, err := KeyFromEnv()
	if err != nil {
		return nil, err
	}
	return New(URLFromEnv(), key, opts...), nil
}

// URLFromEnv returns NULLSPACE_API_URL, or DefaultAPIURL when it is unset.
func URLFromEnv() string {
	if u := os.Getenv(EnvAPIURL); u != "" {
		return u
	}
	return DefaultAPIURL
}

// KeyFromEnv returns NULLSPACE_API_KEY when it is set. Otherwise it reads the
// key file the server writes on first start, $NULLSPACE_DATA_DIR/api-key
// (default /var/lib/nullspace/api-key), so that clients on the server host
// need no configuration. A missing key file yields "" and no error; a key
// file that exists but cannot be read is an error.
func KeyFromEnv() (string, error) {
	if k := os.Getenv(EnvAPIKey); k != "" {
		return k, nil
	}
	dir := os.Getenv(EnvDataDir)
	if dir == "" {
		dir = DefaultDataDir
	}
	path := filepath.Join(dir, KeyFileName)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read API key file: %w (set %s, or run as a user that can read %s)", err, EnvAPIKey, path)
	}
	return strings.TrimSpace(string(b)), nil
}

// APIError is a non-2xx response of the API, decoded from its api.Error body.
type APIError struct {
	// Status is the HTTP status; 0 for an error event inside a stream.
	Status          int
	Code            string // stable code, e.g. "machine_not_found"; empty when the body was not an api.Error
	Message         string
	Retryable       bool
	SuggestedAction string
}

func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString(e.Message)
	if e.Code != "" {
		b.WriteString(" (" + e.Code + ")")
	}
	if e.SuggestedAction != "" {
		b.WriteString("; " + e.SuggestedAction)
	}
	return b.String()
}

// IsCode reports whether err is, or wraps, an *APIError with the given code.
func IsCode(err error, code string) bool {
	var e *APIError
	return errors.As(err, &e) && e.Code == code
}

func fromWire(status int, w *api.Error) *APIError {
	return &APIError{
		Status:          status,
		Code:            w.Code,
		Message:         w.Message,
		Retryable:       w.Retryable,
		SuggestedAction: w.SuggestedAction,
	}
}

// maxErrorBody bounds how much of an error response is read.
const maxErrorBody = 64 << 10

// decodeError turns a non-2xx response into an *APIError. Bodies that are not
// an api.Error (a proxy's HTML page, say) keep an empty Code.
func decodeError(resp *http.Response) *APIError {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var w api.Error
	if err := json.Unmarshal(body, &w); err == nil && w.Code != "" {
		if w.Message == "" {
			w.Message = http.StatusText(resp.StatusCode)
		}
		return fromWire(resp.StatusCode, &w)
	}
	msg := "server answered " + resp.Status
	if s := strings.TrimSpace(string(body)); s != "" && !strings.HasPrefix(s, "<") {
		if len(s) > 200 {
			s = s[:200] + "..."
		}
		msg += ": " + s
	}
	switch resp.StatusCode {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return &APIError{Status: resp.StatusCode, Message: msg, Retryable: true}
	}
	return &APIError{Status: resp.StatusCode, Message: msg}
}

// request describes one API call.
type request struct {
	method string
	path   string // escaped, starting with /v1
	query  url.Values
	body   io.Reader // raw body; set contentType too
	json   any       // JSON body; exclusive with body
	accept string
	// contentType of body.
	contentType string
	// length of body, if known (else it is sent chunked).
	length int64
}

// send performs r and returns the response when its status is 2xx; otherwise
// it closes the body and returns an *APIError.
func (c *Client) send(ctx context.Context, r request) (*http.Response, error) {
	u := c.baseURL + r.path
	if len(r.query) > 0 {
		u += "?" + r.query.Encode()
	}
	body, contentType := r.body, r.contentType
	if r.json != nil {
		b, err := json.Marshal(r.json)
		if err != nil {
			return nil, fmt.Errorf("encode %s %s request: %w", r.method, r.path, err)
		}
		body, contentType = bytes.NewReader(b), "application/json"
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", r.method, r.path, err)
	}
	if r.length > 0 {
		req.ContentLength = r.length
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	accept := r.accept
	if accept == "" {
		accept = "application/json"
	}
	req.Header.Set("Accept", accept)
	if c.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.apiKey)
	}
	if c.userAgent != "" {
		req.Header.Set("User-Agent", c.userAgent)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err // *url.Error names the method and URL already
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

// do performs r and decodes a JSON response into out, if out is not nil.
func (c *Client) do(ctx context.Context, r request, out any) error {
	resp, err := c.send(ctx, r)
	if err != nil {
		return err
	}
	defer func() {
		// Drain a little so the connection can be reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
	}()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode %s %s response: %w", r.method, r.path, err)
	}
	return nil
}

// Health is the body of GET /v1/health.
type Health struct {
	OK      bool   `json:"ok"`
	Version string `json:"version"`
	// Node is the server's node name (serve --node-name), which its host
	// objects' names derive from.
	Node string `json:"node,omitempty"`
	// E2B is where the E2B-compatible API listens (serve --e2b-compat);
	// nil without it.
	E2B *HealthE2B `json:"e2b,omitempty"`
}

// HealthE2B locates the E2B-compatible API.
type HealthE2B struct {
	URL    string `json:"url"`              // E2B_API_URL and E2B_SANDBOX_URL
	Domain string `json:"domain,omitempty"` // E2B_DOMAIN: the edge's domain; empty without an edge
}

// Health reports whether the server is up, and its version. It needs no key.
func (c *Client) Health(ctx context.Context) (*Health, error) {
	var h Health
	if err := c.do(ctx, request{method: http.MethodGet, path: "/v1/health"}, &h); err != nil {
		return nil, err
	}
	return &h, nil
}

// OpenAPISpec returns the server's OpenAPI document (YAML).
func (c *Client) OpenAPISpec(ctx context.Context) ([]byte, error) {
	resp, err := c.send(ctx, request{method: http.MethodGet, path: "/v1/openapi.yaml", accept: "application/yaml, */*"})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("read openapi spec: %w", err)
	}
	return b, nil
}

func machinePath(id string, rest ...string) string {
	p := "/v1/machines/" + url.PathEscape(id)
	for _, r := range rest {
		p += "/" + r
	}
	return p
}

// allPages reads every page of a list at path: page returns a page's items
// and its next_token.
func allPages[L any, T any](ctx context.Context, c *Client, path string, q url.Values, items func(*L) ([]T, string)) ([]T, error) {
	var all []T
	for {
		var l L
		if err := c.do(ctx, request{method: http.MethodGet, path: path, query: q}, &l); err != nil {
			return nil, err
		}
		page, next := items(&l)
		all = append(all, page...)
		if next == "" {
			return all, nil
		}
		q.Set("next_token", next)
	}
}
