# Hugging Face Docker Space (also runs anywhere: docker build -t adaptive-dd . && docker run -p 7860:7860 adaptive-dd).
# Spaces run the container as uid 1000 and route traffic to port 7860; the bundled models and both built-in
# datasets ship with the repository and its packages, so the app needs no network at run time.
FROM python:3.11-slim

RUN useradd -m -u 1000 user
USER user
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HUB_DISABLE_TELEMETRY=1
WORKDIR /home/user/app

# Requirements first, so that code changes reuse the cached dependency layer.
COPY --chown=user requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY --chown=user . .

EXPOSE 7860
CMD ["python", "app.py"]
