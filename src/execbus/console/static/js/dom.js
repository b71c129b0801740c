// Building DOM from data: text goes in as text nodes, never as markup.
// Nothing in the console parses data as HTML (no HTML sinks; a unit test checks).

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key === "title") node.title = String(value);
    else if (key === "href") node.setAttribute("href", safeHref(value));
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "onclick") node.addEventListener("click", value);
    else node.setAttribute(key, String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else if (child instanceof Node) node.appendChild(child);
    else node.appendChild(document.createTextNode(String(child)));
  }
}

// Only in-page links (#/...) are built from data.
export function safeHref(value) {
  const text = String(value);
  return text.startsWith("#/") ? text : "#/";
}

export function setText(id, value) {
  const node = document.getElementById(id);
  if (node) node.textContent = value === undefined || value === null ? "" : String(value);
}

export function show(node, visible) {
  if (typeof node === "string") node = document.getElementById(node);
  if (node) node.hidden = !visible;
}
