package client

import (
	"context"
	"net/http"
	"net/url"

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

// DeleteTemplate deletes a template (DELETE /v1/templates/{name}).
func (c *Client) DeleteTemplate(ctx context.Context, name string) error {
	return c.do(ctx, request{method: http.MethodDelete, path: templatePath(name)}, nil)
}

func templatePath(name string) string { return "/v1/templates/" + url.PathEscape(name) }
