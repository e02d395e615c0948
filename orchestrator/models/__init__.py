"""Built-in models. Each framework's builders live in their own module and import it lazily."""
