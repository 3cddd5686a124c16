from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("transcription", "0005_worker_heartbeat"),
    ]

    operations = [
        migrations.AddField(
            model_name="transcript",
            name="message_seq",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="receiverbatch",
            name="reply_seq",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
    ]
