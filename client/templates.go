package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"os"

	"nullspace.dev/nullspace/api"
)

// ListTemplates lists the templates (GET /v1/templates).
func (c *Client) ListTemplates(ctx context.Context) ([]api.Template, error) {
	return allPages(ctx, c, "/v1/templates", url.Values{}, func(l *api.TemplateList) ([]api.Template, string) { return l.Templates, l.NextToken })
}

// GetTemplate returns one template (GET /v1/templates/{name}).
func (c *Client) GetTemplate(ctx context.Context, name string) (*api.Template, error) {
	var t api.Template
	if err := c.do(ctx, request{method: http.MethodGet, path: templatePath(name)}, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// BuildTemplate builds a template and returns it once it is ready or failed
// (POST /v1/templates). The build runs synchronously and can take minutes:
// bound it with ctx. A failed build is returned as a template in state
// api.TemplateFailed with its Error set, not as an error.
func (c *Client) BuildTemplate(ctx context.Context, req api.BuildTemplateRequest) (*api.Template, error) {
	var t api.Template
	if err := c.do(ctx, request{method: http.MethodPost, path: "/v1/templates", json: req}, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// BuildTemplateFromTarball builds a template like BuildTemplate from a root
// filesystem tarball (plain, gzip, zstd or xz) that it uploads, streaming
// (POST /v1/templates as multipart/form-data, a part request with req and a
// part tarball): req names no source. This works against any server, unlike
// a from_dir or from_tarball path, which the server takes only from the
// directories its operator allows. If tarball is an *os.File (or has a Len
// or a Size), the request says its length, so that a server refuses one over
// its limit (file_too_large) before it is sent.
func (c *Client) BuildTemplateFromTarball(ctx context.Context, req api.BuildTemplateRequest, tarball io.Reader) (*api.Template, error) {
	var head bytes.Buffer
	mw := multipart.NewWriter(&head)
	h := textproto.MIMEHeader{}
	h.Set("Content-Disposition", `form-data; name="request"`)
	h.Set("Content-Type", "application/json")
	w, err := mw.CreatePart(h)
	if err != nil {
		return nil, err
	}
	if err := json.NewEncoder(w).Encode(req); err != nil {
		return nil, fmt.Errorf("encode build request: %w", err)
	}
	if _, err := mw.CreateFormFile("tarball", "rootfs.tar"); err != nil {
		return nil, err
	}
	n := head.Len()
	if err := mw.Close(); err != nil { // appends the closing boundary
		return nil, err
	}
	parts := head.Bytes()
	r := request{method: http.MethodPost, path: "/v1/templates", contentType: mw.FormDataContentType(),
		body: io.MultiReader(bytes.NewReader(parts[:n]), tarball, bytes.NewReader(parts[n:]))}
	if size, ok := readerSize(tarball); ok {
		r.length = int64(len(parts)) + size
	}
	var t api.Template
	if err := c.do(ctx, r, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// readerSize is what is left to read of r, if r can tell.
func readerSize(r io.Reader) (int64, bool) {
	switch v := r.(type) {
	case interface{ Len() int }:
		return int64(v.Len()), true
	case interface{ Size() int64 }:
		return v.Size(), true
	case *os.File:
		fi, err := v.Stat()
		if err != nil || !fi.Mode().IsRegular() {
			return 0, false
		}
		off, err := v.Seek(0, io.SeekCurrent)
		if err != nil {
			return 0, false
		}
		return fi.Size() - off, true
	}
	return 0, false
}

// DeleteTemplate deletes a template (DELETE /v1/templates/{name}).
func (c *Client) DeleteTemplate(ctx context.Context, name string) error {
	return c.do(ctx, request{method: http.MethodDelete, path: templatePath(name)}, nil)
}

func templatePath(name string) string { return "/v1/templates/" + url.PathEscape(name) }
