package httpapi

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/reqbody"
)

// proxy forwards a command or file call to the machine's agent, whose API
// is the same route without the /v1/machines/{id} prefix. Bodies stream in
// both directions; NDJSON streams become SSE when the client asks for it.
func (s *Server) proxy(agentPath string) func(w http.ResponseWriter, r *http.Request, team string) error {
	hasPID := strings.Contains(agentPath, "{pid}")
	return func(w http.ResponseWriter, r *http.Request, team string) error {
		id := r.PathValue("id")
		if hasPID {
			if _, err := parsePID(r); err != nil {
				return err
			}
		}
		// The call ends when the machine stops running (a pause): its
		// agent goes without closing the connection.
		ctx, done := s.machines.WhileRunning(r.Context(), id)
		defer done()
		ep, err := s.machines.AgentEndpoint(ctx, team, id)
		if err != nil {
			return err
		}
		path := strings.NewReplacer("{pid}", r.PathValue("pid"), "{watch_id}", url.PathEscape(r.PathValue("watch_id"))).Replace(agentPath)
		u := ep.URL + path
		if r.URL.RawQuery != "" {
			u += "?" + r.URL.RawQuery
		}
		var body io.Reader
		var in *reqbody.Reader
		if r.ContentLength != 0 && r.Body != nil {
			in = reqbody.New(r.Body)
			body = in
		}
		req, err := http.NewRequestWithContext(ctx, r.Method, u, body)
		if err != nil {
			return fmt.Errorf("agent request: %w", err)
		}
		req.ContentLength = r.ContentLength
		for _, h := range []string{"Content-Type", "Accept"} {
			if v := r.Header.Get(h); v != "" {
				req.Header.Set(h, v)
			}
		}
		req.Header.Set("Authorization", "Bearer "+ep.Token)
		// The transport reads r.Body while it sends the request, which can
		// still be going on when the agent's answer (a stream) comes back.
		// Without full duplex, writing the answer's header makes the server
		// read the rest of r.Body itself, at the same time; the transport
		// then sees a broken body and closes the agent connection in the
		// middle of the stream (about one streamed command in a hundred).
		if err := http.NewResponseController(w).EnableFullDuplex(); err != nil {
			return fmt.Errorf("agent request: %w", err)
		}
		resp, err := s.agent.Do(req)
		if err != nil {
			if r.Context().Err() != nil {
				return nil // the client went away
			}
			if in != nil && in.Err != nil {
				return reqbody.Error(in.Err) // the client's body broke the request, not the agent
			}
			unavailable := errdefs.Wrap(err, errdefs.ErrUnavailable, errdefs.CodeAgentUnavailable,
				fmt.Sprintf("machine %s's agent did not answer", id), "retry in a moment; if it keeps failing, kill the machine and create a new one")
			return s.machines.CheckAgentError(r.Context(), team, id, unavailable)
		}
		defer resp.Body.Close()
		if resp.StatusCode == http.StatusUnauthorized {
			// The agent refused the server's per-machine token: a server-side
			// fault, not a problem with the caller's API key.
			return fmt.Errorf("machine %s's agent refused its token: %w", id, errdefs.ErrInternal)
		}
		return copyResponse(w, r, resp)
	}
}

func copyResponse(w http.ResponseWriter, r *http.Request, resp *http.Response) error {
	ct := resp.Header.Get("Content-Type")
	sse := strings.HasPrefix(ct, "application/x-ndjson") && strings.Contains(r.Header.Get("Accept"), "text/event-stream")
	for _, h := range []string{"Content-Type", "Content-Length", "Content-Disposition", "X-Content-Type-Options"} {
		if v := resp.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	if sse {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Del("Content-Length")
		w.Header().Set("Cache-Control", "no-cache")
	}
	w.WriteHeader(resp.StatusCode)
	flusher, _ := w.(http.Flusher)
	if strings.HasPrefix(ct, "application/x-ndjson") {
		if err := copyLines(w, flusher, resp.Body, sse); err != nil && r.Context().Err() == nil {
			// Headers are sent: cut the response short, so that the client
			// sees a broken stream rather than one that ended.
			panic(http.ErrAbortHandler)
		}
		return nil
	}
	_, err := io.Copy(w, resp.Body)
	if err != nil && r.Context().Err() == nil && !errors.Is(err, io.EOF) {
		// Headers are sent; all we can do is cut the response short.
		panic(http.ErrAbortHandler)
	}
	return nil
}

// copyLines copies an NDJSON stream line by line, flushing each event, as
// SSE frames when sse is set, until body ends; it returns the error that
// ended it other than io.EOF.
func copyLines(w io.Writer, f http.Flusher, body io.Reader, sse bool) error {
	br := bufio.NewReaderSize(body, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			if sse {
				w.Write([]byte("data: "))
				w.Write(bytes.TrimRight(line, "\r\n"))
				w.Write([]byte("\n\n"))
			} else {
				w.Write(line)
			}
			if f != nil && br.Buffered() == 0 {
				f.Flush()
			}
		}
		if err != nil {
			if f != nil {
				f.Flush()
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}
