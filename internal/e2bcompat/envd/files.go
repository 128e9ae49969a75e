package envd

import (
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"path"
	"strconv"
	"strings"

	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/errdefs"
)

// fileRequest reads a /files call: who it is for, and the signature a
// download or upload URL carries instead of the access token.
func fileRequest(r *http.Request, operation string) (req Request, user string, err error) {
	q := r.URL.Query()
	req = request(r.Header)
	req.Path, req.Operation, req.User, req.Signature = q.Get("path"), operation, q.Get("username"), q.Get("signature")
	if v := q.Get("signature_expiration"); v != "" {
		if req.Expiration, err = strconv.ParseInt(v, 10, 64); err != nil {
			return req, "", errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				fmt.Sprintf("signature_expiration %q is not a unix time", v), "use the URL the SDK made, unchanged")
		}
	}
	user = req.User
	if user == "" {
		user = userOf(r.Header)
	}
	return req, user, nil
}

// openFile opens the sandbox of a /files call, or answers with why not
// (ok false). The caller must call sb.Done.
func (s *Server) openFile(w http.ResponseWriter, r *http.Request, operation string) (sb *Sandbox, req Request, user string, ok bool) {
	req, user, err := fileRequest(r, operation)
	if err == nil {
		sb, err = s.open(r.Context(), req)
	}
	if err != nil {
		s.writeError(w, r, err)
		return nil, req, "", false
	}
	return sb, req, user, true
}

// getFile is GET /files?path=: the file's bytes.
func (s *Server) getFile(w http.ResponseWriter, r *http.Request) {
	sb, req, user, ok := s.openFile(w, r, "read")
	if !ok {
		return
	}
	defer sb.Done()
	p := resolve(req.Path, user)
	rc, size, err := sb.Agent.AsUser(user).ReadFile(sb.Ctx, p)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": path.Base(p)}))
	if size >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	}
	if _, err := io.Copy(w, rc); err != nil && r.Context().Err() == nil {
		panic(http.ErrAbortHandler) // headers are sent: cut the body short
	}
}

// writtenEntry is what POST /files answers for each file.
type writtenEntry struct {
	Name     string            `json:"name"`
	Type     string            `json:"type"`
	Path     string            `json:"path"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// metadataHeader prefixes the headers that carry an upload's metadata
// (X-Metadata-KEY: VALUE), the same for every file of the upload.
const metadataHeader = "X-Metadata-"

// uploadMetadata is an upload's metadata, keys lower case as envd has
// them (header names are case-insensitive); nil when there is none.
func uploadMetadata(h http.Header) map[string]string {
	var md map[string]string
	for name, vs := range h {
		key, ok := strings.CutPrefix(http.CanonicalHeaderKey(name), metadataHeader)
		if !ok || key == "" || len(vs) == 0 {
			continue // a bare X-Metadata- names nothing: envd skips it too
		}
		if md == nil {
			md = map[string]string{}
		}
		md[strings.ToLower(key)] = vs[0]
	}
	return md
}

// postFiles is POST /files: one file as the body (application/octet-stream,
// to ?path=), or multipart/form-data parts named "file", each to ?path= or,
// without it, to the part's file name. Each file is written atomically.
func (s *Server) postFiles(w http.ResponseWriter, r *http.Request) {
	sb, req, user, ok := s.openFile(w, r, "write")
	if !ok {
		return
	}
	defer sb.Done()
	body := io.Reader(r.Body)
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			s.writeError(w, r, badBody("the gzip body does not start like gzip: "+err.Error()))
			return
		}
		defer zr.Close()
		body = zr
	}
	md := uploadMetadata(r.Header)
	write := func(dest string, rd io.Reader, size int64) (writtenEntry, error) {
		if dest == "" {
			return writtenEntry{}, badBody("no path for the file: pass ?path= or name the multipart part's file")
		}
		p := resolve(dest, user)
		// envd runs as root: the directories it makes on the way are the
		// user's, wherever they are.
		res, err := sb.Agent.AsUser(user).WriteFile(sb.Ctx, p, rd, agentclient.WriteOptions{Size: size, Metadata: md, ParentsAsRoot: true})
		if err != nil {
			return writtenEntry{}, err
		}
		return writtenEntry{Name: path.Base(p), Type: "file", Path: p, Metadata: res.Metadata}, nil
	}
	var out []writtenEntry
	mt, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt == "multipart/form-data" {
		mr := multipart.NewReader(body, params["boundary"])
		for {
			part, err := mr.NextPart()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				s.writeError(w, r, badBody("the multipart body is malformed: "+err.Error()))
				return
			}
			if part.FormName() != "file" {
				part.Close()
				continue
			}
			dest := req.Path
			if dest == "" {
				// The SDKs name each part's file by its whole path;
				// FileName() would keep only its base.
				_, cd, _ := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
				dest = cd["filename"]
			}
			e, err := write(dest, part, 0)
			part.Close()
			if err != nil {
				s.writeError(w, r, err)
				return
			}
			out = append(out, e)
		}
	} else {
		size := int64(0)
		if body == r.Body && r.ContentLength > 0 {
			size = r.ContentLength
		}
		e, err := write(req.Path, body, size)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		s.writeError(w, r, badBody(`no file in the body: send parts named "file"`))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

func badBody(msg string) error {
	return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument, msg, "send the upload the way the SDK does")
}
