// Swagger UI over this server's openapi.json, found relative to the page so a path prefix is kept.
window.ui = SwaggerUIBundle({
  url: new URL("openapi.json", document.baseURI).href,
  dom_id: "#swagger-ui",
  deepLinking: true,
});
