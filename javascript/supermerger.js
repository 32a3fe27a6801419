// SuperMerger client-side helpers (loaded by the WebUI from javascript/, and by the standalone app).
// Ctrl+Enter (Cmd+Enter on a Mac) anywhere inside the Merge tab presses "Merge & Gen".
(function () {
    function root() {
        var app = document.querySelector("gradio-app");
        return (app && app.shadowRoot) || document;
    }

    document.addEventListener("keydown", function (event) {
        if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
        var r = root();
        var main = r.querySelector("#supermerger_main");
        var focused = r.activeElement || document.activeElement;
        if (!main || !focused || !main.contains(focused)) return;
        var button = r.querySelector("#supermerger_merge_gen");
        if (!button) return;
        event.preventDefault();
        event.stopPropagation();  // not the WebUI's own Ctrl+Enter (txt2img's Generate)
        button.click();
    }, true);
})();
